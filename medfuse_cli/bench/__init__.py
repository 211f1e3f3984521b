"""``medfuse benchmark``'s core: ``measure`` holds the measuring tools (timing, percentiles, peak
memory, FLOPs), generic and knowing nothing of fusers; ``plan`` decides what is measured (which
fusers, built how, on which example inputs) and reports ``BenchRow``s. Import from the module
that defines a name; this package re-exports nothing."""
