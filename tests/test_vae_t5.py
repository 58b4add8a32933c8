"""Per-frame VAE wrapper and T5 encoder on tiny locally built models; caption cleaning."""

from __future__ import annotations

import pytest
import torch

from models.text_encoder import T5Encoder, clean_caption, text_preprocessing
from models.tiny import TINY_T5_DIM, save_tiny_t5, save_tiny_vae
from models.vae import VideoAutoencoderKL


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("t5"))


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------


def test_vae_shapes_and_latent_size(vae_dir):
    vae = VideoAutoencoderKL(from_pretrained=str(vae_dir))
    assert vae.patch_size == (1, 2, 2) and vae.out_channels == 4
    assert vae.get_latent_size((3, 16, 24)) == [3, 8, 12]
    with pytest.raises(ValueError):
        vae.get_latent_size((3, 15, 24))
    x = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 3, 8, 12)
    rec = vae.decode(z)
    assert rec.shape == x.shape and torch.isfinite(rec).all()
    with pytest.raises(ValueError):
        vae.encode(x[:, :, 0])


def test_vae_is_per_frame_and_scaled(vae_dir):
    vae = VideoAutoencoderKL(from_pretrained=str(vae_dir))
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    z = vae.encode(x, sample_posterior=False)
    # Frame (b=1, t=2) encoded alone as an image gives the same latent.
    single = vae.module.encode(x[1, :, 2][None]).latent_dist.mode() * 0.18215
    torch.testing.assert_close(z[1, :, 2], single[0], rtol=1e-5, atol=1e-6)
    dec = vae.decode(z)
    dec_single = vae.module.decode(z[1, :, 2][None] / 0.18215).sample
    torch.testing.assert_close(dec[1, :, 2], dec_single[0], rtol=1e-4, atol=1e-5)


def test_vae_micro_batching_is_equivalent(vae_dir):
    full = VideoAutoencoderKL(from_pretrained=str(vae_dir))
    micro = VideoAutoencoderKL(from_pretrained=str(vae_dir), micro_batch_size=2)
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    torch.testing.assert_close(
        micro.encode(x, sample_posterior=False), full.encode(x, sample_posterior=False), rtol=1e-5, atol=1e-6
    )
    z = full.encode(x, sample_posterior=False)
    torch.testing.assert_close(micro.decode(z), full.decode(z), rtol=1e-5, atol=1e-6)
    # Same posterior statistics (mean and std of the latent distribution), and the mode is its mean.
    (mean_m, std_m), (mean_f, std_f) = micro.posterior(x), full.posterior(x)
    torch.testing.assert_close(mean_m, mean_f, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(std_m, std_f, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mean_f, z)
    assert std_f.shape == z.shape and (std_f > 0).all()
    # Posterior samples: one seed gives the same sample whatever the micro-batch size, and a
    # sample is the mean plus std-scaled noise (standardised, its values look standard normal).
    zs = micro.encode(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        zs, full.encode(x, generator=torch.Generator().manual_seed(0)), rtol=1e-5, atol=1e-6
    )
    eps = (zs - mean_f) / std_f
    assert eps.abs().max() > 0.5 and abs(eps.mean().item()) < 0.1 and abs(eps.std().item() - 1) < 0.1


def test_vae_dtype(vae_dir):
    vae = VideoAutoencoderKL(from_pretrained=str(vae_dir), dtype=torch.bfloat16)
    assert vae.dtype == torch.bfloat16
    z = vae.encode(torch.zeros(1, 3, 2, 8, 8))
    assert z.dtype == torch.bfloat16 and z.shape == (1, 4, 2, 4, 4)


# ---------------------------------------------------------------------------------------------
# T5
# ---------------------------------------------------------------------------------------------


def test_t5_encode_shapes_and_mask(t5_dir):
    enc = T5Encoder(from_pretrained=str(t5_dir), model_max_length=120)
    out = enc.encode(["a cat", "a dog running on the beach at sunset"])
    assert out["y"].shape == (2, 1, 120, TINY_T5_DIM)
    assert out["mask"].shape == (2, 120)
    # ByT5: one token per byte + </s>
    assert out["mask"].sum(1).tolist() == [len("a cat") + 1, len("a dog running on the beach at sunset") + 1]
    assert enc.output_dim == TINY_T5_DIM


def test_t5_truncation_and_padding(t5_dir):
    enc = T5Encoder(from_pretrained=str(t5_dir), model_max_length=16)
    out = enc.encode(["x" * 100, "hi"])
    assert out["y"].shape == (2, 1, 16, TINY_T5_DIM)
    assert out["mask"][0].tolist() == [1] * 16
    assert out["mask"][1].sum().item() == 3
    # Padding does not change the valid tokens' embeddings (T5 attention is masked).
    alone = T5Encoder(from_pretrained=str(t5_dir), model_max_length=3).encode(["hi"])
    torch.testing.assert_close(out["y"][1, 0, :3], alone["y"][0, 0, :3], rtol=1e-5, atol=1e-5)


def test_t5_cleans_captions_before_tokenizing(t5_dir):
    enc = T5Encoder(from_pretrained=str(t5_dir), model_max_length=64)
    messy = enc.encode(["  A <b>Cat</b> https://example.com/x.jpg  "])
    clean = enc.encode(["a cat"])
    torch.testing.assert_close(messy["y"], clean["y"])
    raw = T5Encoder(from_pretrained=str(t5_dir), model_max_length=64, use_text_preprocessing=False)
    assert raw.encode(["A Cat"])["mask"].sum() == len("a cat") + 1  # lower/strip only


def test_t5_null_caption(t5_dir):
    enc = T5Encoder(from_pretrained=str(t5_dir), model_max_length=8)
    with pytest.raises(RuntimeError):
        enc.null(2)

    class YEmb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("y_embedding", torch.randn(8, TINY_T5_DIM))

    enc.y_embedder = YEmb()
    null = enc.null(3)
    assert null.shape == (3, 1, 8, TINY_T5_DIM)
    torch.testing.assert_close(null[2, 0], enc.y_embedder.y_embedding)
    enc2 = T5Encoder(
        from_pretrained=str(t5_dir), model_max_length=8, null_embedding=torch.ones(8, TINY_T5_DIM)
    )
    assert enc2.null(1).shape == (1, 1, 8, TINY_T5_DIM)


def test_t5_dtype(t5_dir):
    enc = T5Encoder(from_pretrained=str(t5_dir), model_max_length=8, dtype=torch.bfloat16)
    assert enc.encode(["a"])["y"].dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------
# Caption cleaning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A Dog Running", "a dog running"),
        ("see https://example.com/page?x=1 now", "see now"),
        ("visit www.foo.org for more", "visit for more"),
        ("<p>Hello <b>world</b></p>", "hello world"),
        ("Tom &amp; Jerry &quot;classic&quot;", 'tom jerry "classic"'),
        ("a%20cat%20sleeping", "a cat sleeping"),
        ("photo by @someone of a lake", "photo by of a lake"),
        ("a cat 猫 on a mat", "a cat on a mat"),
        ("a long—dash – here", "a long-dash - here"),
        ("“quoted” and ‘single’", "\"quoted\" and 'single'"),
        ("server 192.168.0.1 rack", "server rack"),
        ("image IMG_1234.jpg of a beach", "image of a beach"),
        ("wallpaper 1920x1080 mountains", "wallpaper mountains"),
        ("a-slug-like-title-here", "a slug like title here"),
        ("wait... what", "wait what"),
        ("  ...leading and trailing!!  ", "leading and trailing"),
        ("free shipping on this red dress", "on this red dress"),
        ("<person> walking", "person walking"),
        ("line one\\nline two", "line one line two"),
        ("sale #123456789 item", "sale item"),
    ],
)
def test_clean_caption(raw, expected):
    assert clean_caption(raw) == expected


def test_text_preprocessing_modes():
    assert text_preprocessing("  Hello <i>World</i> ") == "hello world"
    assert text_preprocessing("  Hello <i>World</i> ", use_text_preprocessing=False) == "hello <i>world</i>"
    assert clean_caption(clean_caption("a cat")) == "a cat"
    assert clean_caption("") == ""
