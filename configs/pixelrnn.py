"""PixelRNN with Row LSTM layers (van den Oord et al., 2016) on dynamically binarised MNIST.

Run:   python train.py --config configs/pixelrnn.py --workdir runs/pixelrnn
Smoke: python train.py --config configs/pixelrnn.py:smoke --workdir /tmp/pixelrnn

Masked 7x7 input convolution (mask A) -> 7 Row LSTM layers (h=16 units,
residual stream 2h=32, 1x3 masked input-to-state and width-3 state-to-state
convolutions) -> ReLU, 1x1 (32), ReLU, 1x1 masked output layers -> one
Bernoulli logit per pixel; Adam(1e-3). The loss is the exact NLL in nats
per image (`nll`; also `bits_per_dim`). For 8-bit grey or RGB data use
objective.likelihood='categorical' (a 256-way softmax, R->G->B masking for
RGB) with data.binarize=False.

Paper (binarised MNIST, test NLL): Diagonal BiLSTM (7 layers, h=16) 79.20
nats; DRAW <= 80.97. The paper's Row LSTM MNIST figure is not quoted here
(not verified).

Reaches, at 150 of its 20,000 steps (4.0 min on one CPU core): exact NLL
99.8 nats on the first 500 test digits, 99.0 on 500 train digits; far from
converged (the bundled train split is 8,000 digits against the paper's
60,000; benchmarks/RESULTS.md, "Results: held-out figures of every config"). Sampling 64 images takes ~4 s after a one-off ~8 s
compile.
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "pixelrnn"
    c.model.arch = "row_lstm"
    c.model.hidden = 16  # LSTM units h per layer; the residual stream has 2h channels
    c.model.layers = 7
    c.model.head_features = 32
    c.model.kernel = 3  # Row LSTM input-to-state (1 x k) and state-to-state (width k) kernels
    c.model.input_kernel = 7  # the mask-A input convolution is input_kernel x input_kernel
    c.objective.likelihood = "bernoulli"
    c.data.binarize = True
    c.opt.update(lr=1e-3, grad_clip=0.0)
    c.train.update(batch_size=64, num_steps=20000, log_every=100, sample_every=2000, ckpt_every=2000)
    return finalize(c, arg, {"model.hidden": 4, "model.layers": 2, "model.head_features": 8})
