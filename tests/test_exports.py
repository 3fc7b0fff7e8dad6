"""The public API is what __all__ says, in every public module (pinned, as httpx does)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

import streambatch

from conftest import write_sorted_npy

PUBLIC = {
    "streambatch": {"convert", "load_manifest", "Manifest", "Column", "StreamDataset", "Pack", "Image", "RemoteOptions",
                    "StreambatchError", "InputError", "ManifestError", "DataError", "StateError", "TargetExistsError",
                    "WriteError", "__version__"},
}
MODULES = ["streambatch.convert", "streambatch.dataset", "streambatch.decode", "streambatch.errors", "streambatch.manifest",
           "streambatch.plan", "streambatch.quality", "streambatch.io.remote", "streambatch.sources",
           "streambatch.packing", "streambatch.stats", "streambatch.storage", "streambatch.cli", "streambatch.cli_run",
           "streambatch.loader.sizing", "streambatch.loader.state", "streambatch.loader.pool",
           "streambatch.loader.windows", "streambatch.loader.batches", "streambatch.loader.prefetch",
           "streambatch.loader.sums"]


def test_top_level_exports_are_pinned():
    assert set(streambatch.__all__) == PUBLIC["streambatch"]
    for name in streambatch.__all__:
        assert getattr(streambatch, name) is not None


@pytest.mark.parametrize("module", MODULES)
def test_every_public_module_declares_what_it_exports(module):
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_normalising_a_column_with_non_finite_statistics_is_a_manifest_error(tmp_path):
    src = write_sorted_npy(tmp_path / "src", 500)
    x = np.load(src / "x.npy")
    x[3, 1] = np.inf
    np.save(src / "x.npy", x)
    streambatch.convert(src, tmp_path / "d.zarr")
    json.loads((tmp_path / "d.zarr" / "_streambatch.json").read_text())
    with pytest.raises(streambatch.ManifestError, match="non-finite statistics"):
        streambatch.StreamDataset(tmp_path / "d.zarr", normalize=["x"])
    streambatch.StreamDataset(tmp_path / "d.zarr", normalize=["y"])  # a finite column is fine
