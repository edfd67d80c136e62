"""MP4 and frame-folder writers (read back through ffmpeg / PNG) and the display colour maps."""

import imageio.v3 as iio
import numpy as np
import pytest

from stages.render.video import colormap, depth_frames, weight_frames, write_frame_folder, write_mp4


def frames(n=5, height=24, width=32):
    """Smooth moving gradients (H.264 keeps them within a few levels)."""
    rows, cols = np.mgrid[0:height, 0:width]
    return [np.stack([(cols * 8 + 10 * k) % 256, rows * 10, np.full_like(rows, 128)], -1).astype(np.uint8)
            for k in range(n)]


def test_mp4_round_trip(tmp_path):
    video = frames()
    path = write_mp4(tmp_path / "v.mp4", video, fps=12)
    decoded = list(iio.imiter(path, extension=".mp4"))
    assert len(decoded) == len(video) and decoded[0].shape == (24, 32, 3)
    err = np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(decoded, video)])
    assert err < 6.0
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"], "no temporary files are left behind"


def test_without_imageio_ffmpeg_an_mp4_is_a_one_line_error_and_leaves_nothing(tmp_path, monkeypatch):
    """imageio-ffmpeg is a declared dependency, but an install can lack it (GPU hosts without it exist): a clear
    error naming the file, the package and the way round, not a ModuleNotFoundError traceback."""
    from pipeline.errors import UserError

    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)        # import fails as if absent
    with pytest.raises(UserError, match=r"writing v\.mp4 needs imageio-ffmpeg.*pip install imageio-ffmpeg.*"
                                        r"render\.video_paths=\[\]"):
        write_mp4(tmp_path / "v.mp4", frames())
    assert list(tmp_path.iterdir()) == []


def test_mp4_rejects_odd_sizes_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "v.mp4", [np.zeros((5, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="frames must all be"):
        write_mp4(tmp_path / "v.mp4", [np.zeros((4, 8, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)])
    assert list(tmp_path.iterdir()) == []


def test_frame_folder_is_exact_and_replaced_whole(tmp_path):
    video = frames(3)
    folder = write_frame_folder(tmp_path / "f", video)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert all(np.array_equal(iio.imread(folder / f"{k:05d}.png"), v) for k, v in enumerate(video))
    write_frame_folder(tmp_path / "f", video[:1])
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_colour_maps():
    assert np.array_equal(colormap(np.array([0.0, 1.0])), [[68, 1, 84], [253, 231, 37]])
    assert np.array_equal(colormap(np.array([0.125])), [[64, 42, 112]])   # halfway between the first two anchors
    depth = [np.array([[1.0, 2.0], [4.0, 0.0]])]
    alpha = [np.array([[1.0, 1.0], [1.0, 0.0]])]
    colored = depth_frames(depth, alpha)[0]
    assert np.array_equal(colored[1, 1], [0, 0, 0])                         # nothing rendered: black
    assert colored[0, 0].sum() > colored[1, 0].sum()                       # near is brighter than far
    assert np.array_equal(weight_frames([np.array([[0.0, 1.0]])])[0], [[[0, 0, 0], [255, 255, 255]]])


def test_an_interrupted_writer_leaves_nothing(tmp_path):
    from stages.render.video import FrameFolderWriter, Mp4Writer

    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "00000.png").write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="interrupted"):
        with Mp4Writer(tmp_path / "v.mp4", 32, 24) as video, FrameFolderWriter(tmp_path / "keep") as folder:
            for frame in frames(2):
                video.write(frame)
                folder.write(frame)
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert (tmp_path / "keep" / "00000.png").read_bytes() == b"previous"


def test_a_writer_that_fails_before_its_first_frame_leaves_no_file_and_no_warning(tmp_path, caplog):
    from stages.render.video import Mp4Writer

    with pytest.raises(RuntimeError, match="failed"):
        with Mp4Writer(tmp_path / "v.mp4", 32, 24):
            raise RuntimeError("failed")
    with pytest.raises(ValueError, match="no frames to write"):
        with Mp4Writer(tmp_path / "w.mp4", 32, 24):
            pass
    assert list(tmp_path.iterdir()) == []
    assert not [r for r in caplog.records if "No frames have been written" in r.getMessage()]
