"""Native kernels behind XLA custom calls (oneDNN convolutions for XLA:CPU); see onednn.py."""
