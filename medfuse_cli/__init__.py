"""medfuse: fuse co-registered MRI with SPECT, PET or CT images, from the shell or Python."""

__version__ = "0.1.0"
