"""Pure-PyTorch core of AnimateDiff-Lightning, shared by the ComfyUI nodes and the trainer; never imports ComfyUI."""
