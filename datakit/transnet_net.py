"""TransNetV2's forward pass rewritten for the CPU, on the package's own weights.

The package runs its (2+1)D convolutions as `Conv3d`s, which oneDNN serves slowly on this kind of
input (27x48 frames, 3-tap temporal kernels), and slower still as windows get longer. Here:

- activations stay channels-last, (batch, time, height, width, channels);
- the four spatial (1x3x3) convolutions of a block read the same input: one `conv2d` over all
  frames with the four weights stacked;
- each dilated temporal (3x1x1) convolution is three matrix products on time-shifted views;
- batch norm is folded into the temporal weights (inference only).

Same arithmetic as the package up to float rounding (tests/test_transnet.py compares them), for
windows of any length: `forward(frames)` gives (single, many) probabilities for every frame of
each window, each window zero-padded at its ends like the package's convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DILATIONS = (1, 2, 4, 8)
LOOKUP = 101  # frames each similarity feature looks at (the frame +-50)


class _Block(nn.Module):
    """One DilatedDCNNV2: per branch a spatial and a dilated temporal conv2d, BN folded in."""

    def __init__(self, ddcnn, relu: bool):
        super().__init__()
        branches = [ddcnn.Conv3D_1, ddcnn.Conv3D_2, ddcnn.Conv3D_4, ddcnn.Conv3D_8]
        bn = ddcnn.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        f = branches[0].layers[1].weight.shape[0]
        # spatial (2F, Cin, 1, 3, 3) -> (2F, Cin, 3, 3); temporal (F, 2F, 3, 1, 1) -> (F, 2F, 3, 1)
        spatial = [b.layers[0].weight[:, :, 0] for b in branches]
        temporal = [
            b.layers[1].weight[..., 0] * scale[i * f : (i + 1) * f, None, None, None]
            for i, b in enumerate(branches)
        ]
        self.spatial = nn.Parameter(torch.stack(spatial).contiguous(), requires_grad=False)
        self.temporal = nn.Parameter(torch.stack(temporal).contiguous(), requires_grad=False)
        self.shift = nn.Parameter(shift.view(4, f).contiguous(), requires_grad=False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, Cin) -> (B, T, H, W, 4F)."""
        b, t, h, w, c = x.shape
        frames = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)  # (B*T, Cin, H, W), channels-last
        spatial, temporal, shift = (p.to(x.dtype) for p in (self.spatial, self.temporal, self.shift))
        outs = []
        for i, d in enumerate(DILATIONS):
            s = F.conv2d(frames, spatial[i], padding=1)  # (B*T, 2F, H, W), channels-last
            s = s.permute(0, 2, 3, 1).reshape(b, t, h * w, -1).permute(0, 3, 1, 2)  # (B, 2F, T, HW)
            # zero padding in time, as the package: frames beyond a window's ends count as zeros
            outs.append(F.conv2d(s, temporal[i], shift[i], padding=(d, 0), dilation=(d, 1)))
        y = torch.cat(outs, dim=1)  # (B, 4F, T, HW), channels-last
        if self.relu:
            y = F.relu(y)
        return y.permute(0, 2, 3, 1).reshape(b, t, h, w, -1)


class _Stack(nn.Module):
    """One StackedDDCNNV2: two blocks, residual from the first, ReLU, 2x2 average pooling."""

    def __init__(self, sddcnn):
        super().__init__()
        n = len(sddcnn.DDCNN)
        self.blocks = nn.ModuleList(_Block(d, relu=i < n - 1) for i, d in enumerate(sddcnn.DDCNN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x = self.blocks[0](x)
        for block in self.blocks[1:]:
            x = block(x)
        x = F.relu(x) + shortcut
        b, t, h, w, c = x.shape
        x = F.avg_pool2d(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), 2)
        return x.permute(0, 2, 3, 1).reshape(b, t, h // 2, w // 2, c)


def _banded(similarities: torch.Tensor) -> torch.Tensor:
    """(B, T, T) -> (B, T, LOOKUP): row t holds sim(t, t-50) ... sim(t, t+50), zeros off the window."""
    half = LOOKUP // 2
    b, t, _ = similarities.shape
    padded = F.pad(similarities, (half, half))  # (B, T, T + 100)
    # row t of `padded`, columns t .. t+100, as a strided view
    return padded.as_strided((b, t, LOOKUP), (padded.stride(0), padded.stride(1) + 1, 1))


def _histograms(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> L2-normalised 512-bin RGB histograms (B, T, 512)."""
    b, t = frames.shape[:2]
    v = (frames.reshape(b * t, -1, 3) >> 5).long()
    bins = (v[..., 0] << 6) + (v[..., 1] << 3) + v[..., 2]
    hist = torch.zeros(b * t, 512, dtype=torch.float32, device=frames.device)
    hist.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.float32))
    return F.normalize(hist.reshape(b, t, 512), p=2, dim=2)


class FastTransNetV2(nn.Module):
    """The package's TransNetV2 (eval mode), reformulated; built from a loaded package model."""

    def __init__(self, model):
        super().__init__()
        if getattr(model, "use_mean_pooling", False) or model.frame_sim_layer is None:
            raise ValueError("FastTransNetV2 covers the shipped TransNetV2 configuration only")
        self.stacks = nn.ModuleList(_Stack(s) for s in model.SDDCNN)
        self.frame_sim_projection = model.frame_sim_layer.projection
        self.frame_sim_fc = model.frame_sim_layer.fc
        self.color_fc = model.color_hist_layer.fc
        self.fc1, self.cls1, self.cls2 = model.fc1, model.cls_layer1, model.cls_layer2
        self.requires_grad_(False)
        self.eval()

    def forward(
        self, frames: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, T, 27, 48, 3) -> (single, many) probabilities, float32 (B, T) each.

        `dtype` is the arithmetic of the convolutions and the first dense layer (float32 or
        bfloat16); similarities, histograms and the heads stay float32."""
        means, feats = self.trunk(frames.to(dtype) / 255.0)
        return self.heads(frames, means, feats)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutions, >90% of the work: frames (B, T, 27, 48, 3) scaled to [0, 1] ->
        (per-frame spatial means of each stack's output, float32 (B, T, 448); the last stack's
        output flattened (B, T, 4608), in x's dtype)."""
        means = []
        for stack in self.stacks:
            x = stack(x)
            means.append(x.float().mean(dim=(2, 3)))
        return torch.cat(means, dim=2), x.reshape(x.shape[0], x.shape[1], -1)

    def heads(
        self, frames: torch.Tensor, means: torch.Tensor, feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Similarities, histograms and the dense layers (in feats' dtype, then float32)."""
        dtype = feats.dtype
        emb = F.normalize(self.frame_sim_projection(means), p=2, dim=2)
        frame_sim = F.relu(self.frame_sim_fc(_banded(emb @ emb.transpose(1, 2))))
        hist = _histograms(frames)
        color = F.relu(self.color_fc(_banded(hist @ hist.transpose(1, 2))))

        h = torch.cat([color.to(dtype), frame_sim.to(dtype), feats], dim=2)
        h = F.relu(F.linear(h, self.fc1.weight.to(dtype), self.fc1.bias.to(dtype))).float()
        return torch.sigmoid(self.cls1(h))[..., 0], torch.sigmoid(self.cls2(h))[..., 0]
