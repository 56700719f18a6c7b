"""The protocol core: measurement, the four diagnostics and their report. Torch-free to import;
each module loads what it needs itself."""
