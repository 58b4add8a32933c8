"""Ingest: what a folder walk takes and skips, named inputs, and passwords in URLs."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from PIL import Image

from datakit.credentials import CREDENTIALS_PATH, load_credentials, redact_text, split_credentials
from datakit.executors import run_stage
from datakit.ids import url_video_id
from datakit.ingest import ingest
from datakit.stages.probe import ProbeStage
from datakit.workspace import Workspace
from demo.sample_videos import SampleSpec, make_sample


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    """Five tiny videos with different contents."""
    out = tmp_path_factory.mktemp("videos")
    specs = [SampleSpec(f"v{i}", 64, 48, 12, scene_frames=[6], seed=70 + i) for i in range(5)]
    return [Path(make_sample(spec, out).path) for spec in specs]


def file_sources(ws: Workspace) -> dict[str, dict]:
    rows = ws.sql("SELECT * FROM sources WHERE source_kind = 'file'")
    return {str(Path(r["source"]).relative_to(ws.root.parent)): r for r in rows}


def test_a_walk_never_enters_a_datakit_workspace(tmp_path, videos):
    project = tmp_path / "project"
    ws = Workspace(project / "workspace")  # the workspace being filled lives in the walked folder
    old = Workspace(project / "old" / "ws")  # and so does another one
    copies = {
        project / "raw" / "a.mp4": videos[0],
        project / "raw" / "more" / "b.mp4": videos[1],
        ws.media_dir / "0123456789abcdef.mp4": videos[2],  # a download
        ws.clips_dir / "0123456789abcdef-0-48.mp4": videos[3],  # a clip
        old.media_dir / "fedcba9876543210.mp4": videos[4],
    }
    for dest, src in copies.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)

    stats = ingest(ws, [str(project)])
    assert sorted(file_sources(ws)) == ["raw/a.mp4", "raw/more/b.mp4"]
    assert stats.files == 2 and stats.errors == 0
    assert sorted(stats.skipped_workspaces) == [str(old.root), str(ws.root)]
    assert f"skipped 2 datakit workspace(s): {old.root}, {ws.root}" in stats.summary()
    again = ingest(ws, [str(project)])  # re-ingesting after downloads and cuts adds nothing
    assert (again.files, again.unchanged) == (0, 2)
    assert len(ws.sql("SELECT * FROM sources")) == 2


def _still(path: Path, fmt: str) -> Path:
    Image.new("RGB", (32, 24), (200, 30, 30)).save(path, fmt)
    return path


def _gif(path: Path, frames: int = 10) -> Path:
    images = [Image.new("RGB", (32, 24), (i * 20, 40, 90)) for i in range(frames)]
    images[0].save(path, "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return path


def test_gifs_are_videos_and_jpeg_png_webp_are_one_frame_images(tmp_path):
    folder = tmp_path / "media in"
    folder.mkdir()
    gif = _gif(folder / "anim.gif")
    _gif(folder / "anim_without_extension", frames=6)
    png = _still(folder / "photo.png", "PNG")
    _still(folder / "photo.jpg", "JPEG")
    _still(folder / "thumb.bin", "WEBP")  # a WebP found by its magic bytes
    bmp = _still(folder / "scan.bmp", "BMP")
    tiff = _still(folder / "scan.tiff", "TIFF")

    walked = Workspace(tmp_path / "walked")
    stats = ingest(walked, [str(folder)])
    assert sorted(Path(r["path"]).name for r in walked.sql("SELECT path FROM sources")) == [
        "anim.gif",
        "anim_without_extension",
        "photo.jpg",
        "photo.png",
        "thumb.bin",
    ]  # GIFs and supported images, by extension and by magic bytes; BMP and TIFF left out quietly
    assert stats.errors == 0

    named = Workspace(tmp_path / "named")
    ingest(named, [str(gif), str(png), str(bmp), str(tiff)])
    rows = {Path(r["source"]).name: (r["status"], r["error"]) for r in named.sql("SELECT * FROM sources")}
    assert rows == {
        "anim.gif": ("ok", None),
        "photo.png": ("ok", None),
        "scan.bmp": ("error", "still image (BMP): only JPEG, PNG and WebP images are supported"),
        "scan.tiff": ("error", "still image (TIFF): only JPEG, PNG and WebP images are supported"),
    }
    # Downstream, a GIF is a video and an image is one-frame media with one clip.
    run_stage(walked, ProbeStage(), progress=False)
    sql = "SELECT v.*, p.media_type FROM videos v JOIN probes p USING (video_id)"
    probed = {Path(v["source"]).name: v for v in walked.sql(sql)}
    assert (probed["anim.gif"]["status"], probed["anim.gif"]["num_frames"]) == ("ok", 10)
    assert (probed["anim.gif"]["width"], probed["anim.gif"]["height"]) == (32, 24)
    for name in ("photo.png", "photo.jpg", "thumb.bin"):
        got = {k: probed[name][k] for k in ("status", "media_type", "num_frames", "fps", "width", "height")}
        assert got == {
            "status": "ok",
            "media_type": "image",
            "num_frames": 1,
            "fps": None,
            "width": 32,
            "height": 24,
        }
    clips = walked.sql(
        "SELECT c.*, v.source FROM clips c JOIN videos v USING (video_id) WHERE media_type = 'image'"
    )
    assert sorted(Path(c["source"]).name for c in clips) == ["photo.jpg", "photo.png", "thumb.bin"]
    spans = {
        (c["clip_id"] == f"{c['video_id']}-0-1", c["start_frame"], c["end_frame"], c["num_frames"])
        for c in clips
    }
    assert spans == {(True, 0, 1, 1)}


def test_url_passwords_are_redacted_and_kept_in_an_owner_only_file(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ingest(ws, ["https://user:pw1234@Example.com/v.mp4?x=1", "https://tok_abc123@example.com/w.mp4"])
    sources = {r["video_id"]: r["source"] for r in ws.sql("SELECT video_id, source FROM sources")}
    v, w = url_video_id("https://example.com/v.mp4?x=1"), url_video_id("https://example.com/w.mp4")
    assert sources == {  # ids ignore credentials; the URL is otherwise kept as written
        v: "https://user:***@Example.com/v.mp4?x=1",
        w: "https://***@example.com/w.mp4",  # a user-info without password is often a token
    }
    assert load_credentials(ws.root) == {v: "user:pw1234", w: "tok_abc123"}
    secrets = ws.root / CREDENTIALS_PATH
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600

    # A new password for the same URL replaces the old one; the redacted form changes nothing.
    stats = ingest(
        ws, ["https://user:newpass9@example.com/v.mp4?x=1", "https://user:***@example.com/v.mp4?x=1"]
    )
    assert (stats.urls, stats.unchanged) == (0, 2)
    assert load_credentials(ws.root)[v] == "user:newpass9"
    assert len(ws.sql("SELECT * FROM sources")) == 2


def test_no_secrets_file_without_credentials(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ingest(ws, ["https://example.com/a.mp4", "http://user:@example.com/b.mp4"])  # an empty password
    assert not (ws.root / CREDENTIALS_PATH).parent.exists()
    assert {r["source"] for r in ws.sql("SELECT source FROM sources")} == {
        "https://example.com/a.mp4",
        "http://user:@example.com/b.mp4",
    }


def test_split_and_redact_credentials():
    assert split_credentials("https://host/a@b?c=d@e") == ("https://host/a@b?c=d@e", None)  # no user-info
    assert split_credentials("https://u:p%40ss@h:8080/x#f") == ("https://u:***@h:8080/x#f", "u:p%40ss")
    text = "GET https://u:p%40ss@h/x failed; password p@ss rejected"
    assert redact_text(text, "u:p%40ss") == "GET https://u:***@h/x failed; password *** rejected"


def test_a_url_list_csv_stays_a_url_list_and_a_known_dataset_header_is_imported(tmp_path):
    ws = Workspace(tmp_path / "ws")
    urls = tmp_path / "urls.csv"
    urls.write_text("url,note\nhttps://example.com/a.mp4,x\n")
    panda = tmp_path / "panda.csv"
    panda.write_text(
        "videoID,url,timestamp,caption,matching_score\n"
        "v,https://example.com/b.mp4,\"[['0:00:00.000', '0:00:02.000']]\",['a ball'],[0.3]\n"
    )
    stats = ingest(ws, [str(urls), str(panda)])
    assert stats.urls == 1 and len(stats.imports) == 1 and "1 spans" in stats.imports[0]
    assert {r["source"] for r in ws.sql("SELECT source FROM sources")} == {
        "https://example.com/a.mp4",
        "https://example.com/b.mp4",
    }
    assert ws.sql("SELECT caption FROM given_spans") == [{"caption": "a ball"}]
