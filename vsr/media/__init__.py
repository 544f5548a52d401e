"""Media I/O with PyAV: still images now; probing, decoding and encoding video as the pipeline grows."""
