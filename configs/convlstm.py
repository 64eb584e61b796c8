"""ConvLSTM encoder-forecaster (Shi et al., 2015) on Moving MNIST generated on the fly.

Run:   python train.py --config configs/convlstm.py --workdir runs/convlstm
Smoke: python train.py --config configs/convlstm.py:smoke --workdir /tmp/convlstm

Data: two bundled MNIST digits bouncing in 64x64 frames (Srivastava et al.,
2015), 20 frames per sequence stored as one (64, 64, 20) record (time in the
channel axis), sequence i seeded by (data.dataset_seed, i); grey values in
[0, 1], not binarised. Model: 4x4 patches (64x64 -> 16x16x16), two encoding
and two forecasting ConvLSTM layers of 64 channels with 5x5 kernels, the
forecaster started from the encoder's states, a 1x1 readout of all its
layers; Bernoulli cross-entropy of the 10 future frames, Adam(1e-3).
Evaluation: per-frame BCE and squared error (`mse_per_frame`), next to
copying the last context frame (`copy_last_*`).

The paper's best model (three layers of 128/64/64 channels) is compared by
per-sequence cross-entropy; not reproduced here.

Measured here (2-core CPU shared with other jobs, one device): this default
is sized for a GPU, ~23 s per step on the CPU; its results are not measured.
A 300-step run with --config.model.hidden=16 (19 min) reached 733 nats BCE
and 156 squared error per frame, against 1380 and 285 for copying the last
frame, mostly by predicting faint blurred digits.
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "convlstm"
    c.model.arch = "encoder_forecaster"
    c.model.hidden = 64
    c.model.layers = 2
    c.model.kernel = 5
    c.model.patch = 4
    c.model.context_frames = 10
    c.model.future_frames = 10
    c.data.name = "moving_mnist"
    c.data.binarize = False
    c.data.num_sequences = 10000
    c.data.seq_len = 20
    c.data.frame_size = 64
    c.data.num_digits = 2
    c.data.dataset_seed = 0
    c.opt.update(lr=1e-3, grad_clip=0.0)
    c.train.update(batch_size=16, num_steps=20000, log_every=100, sample_every=2000, ckpt_every=2000)
    return finalize(c, arg, {"model.hidden": 8, "model.layers": 1, "model.kernel": 3, "data.num_sequences": 64, "train.num_grid": 20})
