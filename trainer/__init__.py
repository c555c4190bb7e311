"""Headless AnimateDiff-Lightning distillation trainer (`python -m trainer`); never imports ComfyUI or diffusers."""
