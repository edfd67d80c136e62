"""Outputs written atomically (through tempfile) get the user's default mode, not tempfile's private 0600 / 0700."""

import os

import numpy as np
import pytest

from pipeline.io import atomic_path, current_umask, write_json


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_atomic_files_get_the_default_mode(tmp_path, umask_027):
    assert current_umask() == 0o027
    write_json(tmp_path / "metrics.json", {"psnr": 1.0})
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "metrics.json") == mode(tmp_path / "model.pt") == 0o640      # 0666 & ~027
    assert current_umask() == 0o027                                                    # left as it was


def test_videos_frame_folders_and_scenes_get_the_default_mode(tmp_path, umask_027):
    from pipeline.cli import main
    from stages.render.video import FrameFolderWriter, Mp4Writer

    frame = np.zeros((24, 32, 3), np.uint8)
    with Mp4Writer(tmp_path / "v.mp4", 32, 24) as video, FrameFolderWriter(tmp_path / "v") as folder:
        video.write(frame)
        folder.write(frame)
    assert mode(tmp_path / "v.mp4") == 0o640 and mode(tmp_path / "v") == 0o750
    assert main(["make-scene", "object", "--out", str(tmp_path / "s"), "--frames", "2", "--res", "16"]) == 0
    assert mode(tmp_path / "s") == 0o750


def test_a_file_system_without_modes_still_takes_the_write(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)                 # as on FAT or some network shares
    write_json(tmp_path / "metrics.json", {"psnr": 1.0})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_json_with_a_byte_order_mark_reads_and_utf16_is_named(tmp_path):
    from pipeline.errors import UserError
    from pipeline.io import read_json

    path = tmp_path / "a.json"
    path.write_bytes(b"\xef\xbb\xbf" + '{"fl_x": 40, "name": "scène"}'.encode())    # UTF-8 with a BOM
    assert read_json(path) == {"fl_x": 40, "name": "scène"}
    path.write_bytes('{"fl_x": 40}'.encode("utf-16"))                                 # BOM + UTF-16
    with pytest.raises(UserError, match="a.json: is UTF-16 text; JSON files must be UTF-8"):
        read_json(path)
    little_endian = '{"fl_x": 40}'.encode("utf-32")             # BOM FF FE 00 00: begins like UTF-16's FF FE
    big_endian = b"\x00\x00\xfe\xff" + '{"fl_x": 40}'.encode("utf-32-be")
    for content in (little_endian, big_endian):
        path.write_bytes(content)
        with pytest.raises(UserError, match="a.json: is UTF-32 text; JSON files must be UTF-8"):
            read_json(path)
