"""Checkpoint layouts: every format round-trips to identical weights; bad ones fail clearly."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from geofm import cli
from geofm.errors import CheckpointError
from geofm.models import create_encoder, create_model, read_checkpoint, save_pretrained
from geofm.models.presets import infer_config


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    model = create_model("prithvi_tiny")
    for p in model.parameters():  # make every tensor distinctive
        p.data.normal_()
    return model


def v1_flat(sd):
    return {k.split(".", 1)[1]: v for k, v in sd.items()}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_v1_flat_layout_has_reference_key_names(ref):
    keys = set(v1_flat(ref.state_dict()))
    for k in ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.norm1.weight",
              "blocks.3.attn.qkv.weight", "blocks.3.attn.proj.bias", "blocks.0.norm2.bias", "blocks.1.mlp.fc1.weight",
              "blocks.1.mlp.fc2.bias", "norm.weight", "mask_token", "decoder_embed.weight", "decoder_pos_embed",
              "decoder_blocks.1.attn.qkv.bias", "decoder_norm.weight", "decoder_pred.weight"]:
        assert k in keys, k
    assert ref.state_dict()["encoder.patch_embed.proj.weight"].shape == (64, 6, 1, 8, 8)


@pytest.mark.parametrize("layout", ["v1_flat", "prefixed", "model_wrapper", "module_prefix", "safetensors"])
def test_layouts_round_trip(ref, tmp_path, layout):
    sd = ref.state_dict()
    if layout == "v1_flat":
        path = tmp_path / "Prithvi_100M.pt"
        torch.save(v1_flat(sd), path)
    elif layout == "prefixed":
        path = tmp_path / "model.pth"
        torch.save(sd, path)
    elif layout == "model_wrapper":
        path = tmp_path / "ckpt.pth"
        torch.save({"model": v1_flat(sd), "epoch": 3}, path)
    elif layout == "module_prefix":  # DDP-wrapped, compiled
        path = tmp_path / "ddp.pt"
        torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = create_model("prithvi_tiny", checkpoint=path)
    assert_same_weights(loaded, ref)
    x = torch.randn(1, 6, 3, 64, 64)
    torch.testing.assert_close(loaded.encode(x), ref.encode(x))


def test_lightning_checkpoint_of_our_own(ref, tmp_path):
    sd = {f"model.{k}": v for k, v in ref.state_dict().items()}
    sd["head.weight"] = torch.zeros(3)  # other modules of the task are ignored
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "epoch": 1, "pytorch-lightning_version": "2.6",
                "hyper_parameters": {"model_config": ref.config.to_dict()}}, path)
    loaded = create_model(None, checkpoint=path)  # configuration from the hyperparameters
    assert loaded.config.embed_dim == 64 and loaded.config.depth == 4
    assert_same_weights(loaded, ref)


def test_hugging_face_folder_cache_entry_and_repo_id(ref, tmp_path, monkeypatch):
    folder = save_pretrained(ref, tmp_path / "export", name="prithvi_tiny")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["pretrained_cfg"]["embed_dim"] == 64 and len(cfg["pretrained_cfg"]["mean"]) == 6
    assert_same_weights(create_model(None, checkpoint=folder), ref)
    # a cache entry as huggingface_hub lays it out: refs/main -> snapshots/<commit>/...
    cache = tmp_path / "hub"
    entry = cache / "models--ibm-nasa-geospatial--Prithvi-tiny"
    snap = entry / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("a" * 40)
    for f in folder.iterdir():
        os.link(f, snap / f.name)
    assert_same_weights(create_model("prithvi_tiny", checkpoint=entry), ref)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    assert_same_weights(create_model("prithvi_tiny", checkpoint="ibm-nasa-geospatial/Prithvi-tiny"), ref)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        create_model("prithvi_tiny", checkpoint="someone/not-cached")


def test_strict_loading_reports_missing_unexpected_and_shapes(ref, tmp_path):
    sd = ref.state_dict()
    enc_only = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    path = tmp_path / "enc.pt"
    torch.save(enc_only, path)
    with pytest.raises(CheckpointError, match="encoder_only=True") as e:
        create_model("prithvi_tiny", checkpoint=path)
    assert "missing keys (32)" in str(e.value) and "decoder.decoder_blocks.* (24)" in str(e.value)
    assert "decoder.mask_token" in str(e.value)
    model = create_model("prithvi_tiny", checkpoint=path, encoder_only=True)
    torch.testing.assert_close(model.encoder.blocks[2].mlp.fc1.weight, ref.encoder.blocks[2].mlp.fc1.weight)
    encoder = create_encoder("prithvi_tiny", checkpoint=path)
    torch.testing.assert_close(encoder.norm.weight, ref.encoder.norm.weight)

    extra = dict(sd, **{"encoder.blocks.9.attn.qkv.weight": torch.zeros(1)})
    torch.save(extra, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): encoder.blocks.9.attn.qkv.weight"):
        create_model("prithvi_tiny", checkpoint=path)
    create_model("prithvi_tiny", checkpoint=path, strict=False)  # tolerated when not strict

    with pytest.raises(CheckpointError, match=r"encoder.blocks.0.mlp.fc1.weight: file \(256, 64\) vs model"):
        create_model("prithvi_tiny", checkpoint=tmp_path / "enc.pt", mlp_ratio=2.0, strict=False)


def test_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    path = tmp_path / "evil.pt"
    torch.save({"weights": Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a Prithvi checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights in folder"):
        read_checkpoint(tmp_path / "empty")


def test_position_embedding_interpolated_on_load(ref, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(ref.state_dict(), path)
    big = create_model("prithvi_tiny", checkpoint=path, img_size=128)
    assert big.encoder.pos_embed.shape == (1, 1 + 3 * 16 * 16, 64)
    from geofm.models.vit import interpolate_pos_embed

    expected = interpolate_pos_embed(ref.encoder.pos_embed, (3, 8, 8), (3, 16, 16))
    torch.testing.assert_close(big.encoder.pos_embed, expected)
    torch.testing.assert_close(big.encoder.blocks[0].attn.qkv.weight, ref.encoder.blocks[0].attn.qkv.weight)


def test_infer_config_from_shapes(ref):
    from geofm.models.checkpoints import adapt_state_dict

    cfg = infer_config(adapt_state_dict(v1_flat(ref.state_dict())))
    assert cfg["embed_dim"] == 64 and cfg["depth"] == 4 and cfg["num_heads"] == 4
    assert cfg["patch_size"] == (1, 8, 8) and cfg["img_size"] == 64 and cfg["num_frames"] == 3
    assert cfg["decoder_embed_dim"] == 64 and cfg["decoder_depth"] == 2


def test_convert_command(ref, tmp_path, capsys):
    src = tmp_path / "Prithvi_tiny.pt"
    torch.save(v1_flat(ref.state_dict()), src)
    out = tmp_path / "hf"
    assert cli.main(["convert", str(src), str(out)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_weights(create_model(None, checkpoint=out), ref)
    # encoder-only export
    out2 = tmp_path / "enc"
    assert cli.main(["convert", str(src), str(out2), "--model", "prithvi_tiny", "--encoder-only"]) == 0
    from safetensors.torch import load_file

    assert not any(k.startswith("decoder.") for k in load_file(str(out2 / "model.safetensors")))
    assert json.loads((out2 / "config.json").read_text())["encoder_only"] is True
