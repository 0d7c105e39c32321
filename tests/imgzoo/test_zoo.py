"""`imgzoo zoo`: the plan is consistent with the recipes, and a build trains, resumes, reuses
and exports a graph whose recorded accuracy is what ONNX Runtime scores on the split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from imgzoo.cli import main
from imgzoo.errors import UserError
from imgzoo.manifest import ONNX_FILENAME, load_manifest, sha256_file, verify_files
from imgzoo.names import is_valid_name
from imgzoo.zoo import ZOO, BuildOptions, Built, ZooEntry, build_zoo, parse_data, run_dir
from tests.conftest import SubsetFactory
from tests.training.conftest import shrink_for, shrunk
from training.recipes import RECIPES, Recipe

# ------------------------------------------------------------------ the plan


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.dataset)
def test_each_entry_names_a_recipe_of_its_data_set_with_its_own_tta(entry: ZooEntry) -> None:
    recipe = RECIPES[entry.recipe]
    assert recipe.dataset == entry.dataset
    # The graph carries the TTA the recipe's recorded figure was measured with.
    assert entry.tta == recipe.tta
    assert len(set(entry.seeds)) == len(entry.seeds) >= 1
    assert is_valid_name(entry.model)
    assert entry.model == (recipe.model if len(entry.seeds) == 1 else f"{recipe.model}_x2")


def test_the_zoo_has_one_entry_per_data_set_with_real_data() -> None:
    assert sorted(e.dataset for e in ZOO) == ["butterfly", "cifar10", "fer2013"]


def test_list_prints_every_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "--list"]) == 0
    out = capsys.readouterr().out
    for entry in ZOO:
        line = next(line for line in out.splitlines() if line.startswith(entry.dataset + " "))
        assert entry.recipe in line and f"{entry.dataset}/{entry.model}" in line
        assert entry.recorded in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no data set given"),
        (["--data", "cifar10"], "--data takes DATASET=DIR"),
        (["--data", "mnist=."], "the zoo has no data set 'mnist'"),
        (["--data", "cifar10=/nonexistent/dir"], "is not a directory"),
        (["--data", "cifar10=.", "--data", "cifar10=."], "names cifar10 twice"),
    ],
)
def test_bad_arguments_exit_2_before_any_work(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs, repository = tmp_path / "runs", tmp_path / "repo"
    args = ["zoo", "--runs", str(runs), "--repository", str(repository), *argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not runs.exists() and not repository.exists()


def test_download_is_offered_only_where_the_library_can_fetch_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing-yet"
    # CIFAR-10 can be downloaded into a directory that does not exist yet ...
    assert parse_data([f"cifar10={missing}"], download=True) == {"cifar10": missing}
    # ... FER2013 cannot: the error says where to get it.
    args = ["zoo", "--download", "--data", f"fer2013={missing}", "--runs", str(tmp_path / "r")]
    assert main(args) == 2
    assert "download FER2013 (msambare/fer2013) from Kaggle" in capsys.readouterr().err


def test_an_offline_download_fails_with_a_clear_message_and_writes_no_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    import torchvision.datasets

    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    runs, repository = tmp_path / "runs", tmp_path / "repo"
    args = ["zoo", "--download", "--data", f"cifar10={tmp_path / 'cifar10'}", "--no-progress"]
    assert main([*args, "--runs", str(runs), "--repository", str(repository)]) == 2
    err = capsys.readouterr().err
    assert "cannot download CIFAR-10" in err and "Temporary failure in name resolution" in err
    assert not list(runs.rglob("*.pt")) and not repository.exists()


def test_parse_data_maps_each_data_set_to_its_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    roots = parse_data([f"cifar10={tmp_path / 'a'}", f"fer2013={tmp_path / 'b'}"])
    assert roots == {"cifar10": tmp_path / "a", "fer2013": tmp_path / "b"}


def test_a_run_directory_of_another_run_is_refused(tmp_path: Path) -> None:
    from imgzoo.zoo import finished_run

    recipe = RECIPES["cifar10_fastnet_muon"]
    directory = tmp_path / "cifar10_fastnet_muon-s0"
    directory.mkdir()
    (directory / "best.pt").write_bytes(b"")

    def write(found: Recipe, completed: bool = True) -> None:
        summary = {"recipe": found.to_dict(), "completed": completed}
        (directory / "summary.json").write_text(json.dumps(summary))

    write(recipe)
    assert finished_run(directory, recipe)
    write(recipe, completed=False)
    assert not finished_run(directory, recipe)
    write(recipe.override(seed=1))
    with pytest.raises(UserError, match=r"holds another run: seed=1 \(zoo: 0\)"):
        finished_run(directory, recipe)
    write(RECIPES["cifar10_fastnet"])
    with pytest.raises(UserError, match=r"name='cifar10_fastnet' \(zoo: 'cifar10_fastnet_muon'\)"):
        finished_run(directory, recipe)
    (directory / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable training summary"):
        finished_run(directory, recipe)
    (directory / "summary.json").unlink()
    assert not finished_run(directory, recipe)


# ------------------------------------------------------------------ a real build

# Three distinct CIFAR-10 classes, as the recipe tests use them: a shrunk recipe learns them
# well above chance in seconds.
_CLASSES = ("airplane", "automobile", "frog")


def _shrink(recipe: Recipe) -> Recipe:
    return shrunk(recipe, shrink_for(recipe))


@pytest.mark.slow
@pytest.mark.shared_data
def test_a_build_trains_resumes_exports_measures_and_then_reuses(
    shared_subset: SubsetFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchvision.datasets

    from training.datasets import load_data
    from training.engine import train

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the build tried to download CIFAR-10 over images it has")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)

    extracted = shared_subset("cifar10-train-a.tar.gz", 60, ("train",))
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    for name in _CLASSES:
        (root / "train" / name).symlink_to(extracted / "train" / name, target_is_directory=True)
    # A two-network entry: the ensemble path, with the recipe's TTA.
    entry = ZooEntry("cifar10", "cifar10_fastnet_muon", (0, 1), tta=2, recorded="test")
    runs, repository = tmp_path / "runs", tmp_path / "repo"

    # Seed 1 was cut short after its first epoch: the build resumes it.
    seed1 = _shrink(RECIPES[entry.recipe]).override(seed=1)
    cut = train(
        seed1, data_root=root, out_dir=run_dir(runs, entry.recipe, 1), device="cpu",
        progress=False, stop_after_epoch=1,
    )  # fmt: skip
    assert not cut.completed

    def build() -> list[Built]:
        # `download`: images already in the folder layout are used, never fetched.
        options = BuildOptions(
            repository=repository, runs=runs, device="cpu", progress=False, download=True,
            adjust=_shrink,
        )  # fmt: skip
        return build_zoo({"cifar10": root}, options, entries=(entry,))

    built = build()
    out = capsys.readouterr().out
    assert f"resuming from {run_dir(runs, entry.recipe, 1) / 'last.pt'}" in out
    assert f"training into {run_dir(runs, entry.recipe, 0)}" in out

    assert [b.exported for b in built] == [True]
    version_dir = repository / "cifar10" / "fastnet_x2" / "1"
    manifest = load_manifest(version_dir)
    verify_files(version_dir, manifest)
    assert manifest == built[0].manifest
    composition = manifest.composition
    assert composition is not None and composition.tta == 2
    best = [run_dir(runs, entry.recipe, s) / "best.pt" for s in entry.seeds]
    assert sorted(m.checkpoint_sha256 for m in composition.members) == sorted(
        sha256_file(p) for p in best
    )
    assert sorted(m.seed for m in composition.members) == [0, 1]
    # The resumed run trained all its epochs, one metrics line each.
    lines = (run_dir(runs, entry.recipe, 1) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]

    # The recorded accuracy is what the exported file scores on the validation split.
    val = load_data(
        "cifar10", root, image_size=16, channels=3, val_fraction=0.3, split_seed=0, progress=False
    ).val
    images = val.images.permute(0, 2, 3, 1).contiguous().numpy()
    session = ort.InferenceSession(
        str(version_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"]
    )
    logits = np.concatenate(
        [session.run(None, {"image": images[i : i + 32]})[0] for i in range(0, len(images), 32)]
    )
    accuracy = float((logits.argmax(1) == val.labels.numpy()).mean())
    assert composition.val_images == len(images)
    assert manifest.metrics.val_accuracy == pytest.approx(accuracy, abs=1e-9)
    assert accuracy > 0.5  # three classes: chance is 1/3

    # The service shows the zoo with that figure and answers with the graph's own top-1.
    from PIL import Image

    from tests.service.conftest import serve

    with serve(repository) as server, server.client() as client:
        (listed,) = client.get("/models").json()["models"]
        assert (listed["dataset"], listed["model"]) == ("cifar10", "fastnet_x2")
        assert listed["versions"][0]["metrics"]["val_accuracy"] == manifest.metrics.val_accuracy
        assert listed["versions"][0]["composition"]["tta"] == 2
        png = io.BytesIO()
        Image.fromarray(images[0]).save(png, format="PNG")
        answer = client.post("/predict/cifar10/fastnet_x2", files={"file": png.getvalue()})
        assert answer.status_code == 200, answer.text
        top = answer.json()["predictions"][0]["label"]
        assert top == manifest.labels[int(logits[0].argmax())]

    # A second build trains nothing and exports nothing.
    stamps = [p.stat().st_mtime_ns for p in best]
    again = build()
    out = capsys.readouterr().out
    assert out.count("reusing") == 2 and "exporting" not in out
    assert [b.exported for b in again] == [False]
    assert again[0].manifest.version == 1
    assert [p.stat().st_mtime_ns for p in best] == stamps
    assert sorted(p.name for p in (repository / "cifar10" / "fastnet_x2").iterdir()) == ["1"]
