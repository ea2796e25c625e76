"""CLIPSeg in pure PyTorch with the reference API of `transformers`."""
