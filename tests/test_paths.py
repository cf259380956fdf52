"""Path rules: commands may only touch host paths inside the configured roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.errors import ExecutionFailure
from consumer.paths import PathRules
from schemas import ErrorCategory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "data" / "in" / "a.csv").write_text("a\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key").write_text("k")
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "build.yml").write_text("steps: []\n")
    (tmp_path / "workflows" / "lint.yaml").write_text("steps: []\n")
    (tmp_path / "outside.yml").write_text("steps: []\n")
    return tmp_path


def rules(tree: Path, roots: list[str] | None = None, outputs: list[str] | None = None) -> PathRules:
    return PathRules(
        volume_roots=roots if roots is not None else [str(tree / "data")],
        workflow_directory=tree / "workflows",
        output_roots=outputs if outputs is not None else [str(tree / "data")],
    )


def refused(call, *args: object, **kwargs: object) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ExecutionFailure) as info:
        call(*args, **kwargs)
    assert info.value.category is ErrorCategory.PERMANENT
    return info.value.message


def test_directory_inside_a_root_resolves_to_its_real_path(tree: Path) -> None:
    assert rules(tree).host_directory(str(tree / "data" / "in")) == (tree / "data" / "in").resolve()
    assert rules(tree).host_directory(str(tree / "data")) == (tree / "data").resolve()


def test_relative_paths_are_taken_from_the_working_directory(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert rules(tree, ["./data"]).host_directory("./data/in") == (tree / "data" / "in").resolve()


def test_a_directory_outside_every_root_is_refused(tree: Path) -> None:
    message = refused(rules(tree).host_directory, str(tree / "secret"))
    assert "outside the allowed host directories" in message
    refused(rules(tree).host_directory, "/etc")


def test_a_sibling_with_a_common_prefix_is_not_inside(tree: Path) -> None:
    (tree / "data-evil").mkdir()
    refused(rules(tree).host_directory, str(tree / "data-evil"))


def test_dot_dot_is_refused_even_when_it_would_land_inside(tree: Path) -> None:
    message = refused(rules(tree).host_directory, str(tree / "data" / "in" / ".." / "in"))
    assert "'..'" in message
    refused(rules(tree).host_directory, str(tree / "data" / ".." / "secret"))


def test_a_symlink_pointing_out_of_a_root_is_refused(tree: Path) -> None:
    (tree / "data" / "escape").symlink_to(tree / "secret")
    message = refused(rules(tree).host_directory, str(tree / "data" / "escape"))
    assert "outside" in message
    # and an export target under such a link, even if it does not exist yet
    assert "symlink" in refused(rules(tree).output_path, str(tree / "data" / "escape" / "new-file"), directory=False)


def test_a_symlink_staying_inside_is_fine(tree: Path) -> None:
    (tree / "data" / "alias").symlink_to(tree / "data" / "in")
    assert rules(tree).host_directory(str(tree / "data" / "alias")) == (tree / "data" / "in").resolve()


def test_missing_directory_and_file_instead_of_directory(tree: Path) -> None:
    assert "does not exist" in refused(rules(tree).host_directory, str(tree / "data" / "nope"))
    assert "not a directory" in refused(rules(tree).host_directory, str(tree / "data" / "in" / "a.csv"))
    assert rules(tree).host_file(str(tree / "data" / "in" / "a.csv")).name == "a.csv"
    refused(rules(tree).host_file, str(tree / "secret" / "key"))


def test_export_target_may_not_exist_yet_but_must_be_inside_an_output_root(tree: Path) -> None:
    target = rules(tree).output_path(str(tree / "data" / "out" / "report"), directory=False)
    assert target.path == (tree / "data").resolve() / "out" / "report"
    assert target.root == (tree / "data").resolve() and target.parts == ("out", "report")
    assert "allowed_output_roots" in refused(rules(tree).output_path, str(tree / "elsewhere"), directory=True)


def test_reading_does_not_grant_writing(tree: Path) -> None:
    # data is a read root; only data/out is an output root
    r = rules(tree, outputs=[str(tree / "data" / "out")])
    assert r.host_directory(str(tree / "data" / "in")) == (tree / "data" / "in").resolve()
    assert "allowed_output_roots" in refused(r.output_path, str(tree / "data" / "in" / "x"), directory=False)
    # and with no output root configured nothing may be written at all
    none = rules(tree, outputs=[])
    assert "writes nothing to its host" in refused(none.output_path, str(tree / "data" / "x"), directory=False)


def test_writes_never_reach_the_workflow_directory_even_under_an_output_root(tree: Path) -> None:
    r = rules(tree, outputs=[str(tree)])
    for target, directory in [
        (tree / "workflows" / "build.yml", False),  # a file inside it
        (tree / "workflows" / "new", True),
        (tree, True),  # a directory export around it could wipe it
    ]:
        assert "what the worker itself reads" in refused(r.output_path, str(target), directory=directory)
    assert r.output_path(str(tree / "report.txt"), directory=False).path == tree.resolve() / "report.txt"


def test_write_paths_may_not_pass_through_any_symlink(tree: Path) -> None:
    out = tree / "data" / "out"
    out.mkdir()
    (out / "alias").symlink_to(out)  # even one that stays inside the root
    assert "symlink" in refused(rules(tree).output_path, str(out / "alias" / "f"), directory=False)
    (out / "file").symlink_to(tree / "workflows" / "build.yml")
    assert "symlink" in refused(rules(tree).output_path, str(out / "file"), directory=False)


def test_without_roots_the_working_directory_is_the_root(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree / "data")
    no_roots = rules(tree, [])
    assert no_roots.host_directory("./in") == (tree / "data" / "in").resolve()
    assert "outside" in refused(no_roots.host_directory, str(tree / "secret"))


def test_the_adapters_own_data_is_never_exposed(tree: Path) -> None:
    cache = tree / "data" / ".cache"
    (cache / "valkey").mkdir(parents=True)
    guarded = PathRules(
        volume_roots=[str(tree / "data")],
        workflow_directory=tree / "workflows",
        protected=[cache],
        output_roots=[str(tree / "data")],
    )
    assert "adapter's own data" in refused(guarded.host_directory, str(cache / "valkey"))
    assert "adapter's own data" in refused(guarded.host_directory, str(tree / "data"))  # it holds the cache
    assert "what the worker itself reads" in refused(guarded.output_path, str(cache / "dump.rdb"), directory=False)
    assert guarded.host_directory(str(tree / "data" / "in")) == (tree / "data" / "in").resolve()


def test_workflow_files_by_name_with_or_without_suffix(tree: Path) -> None:
    r = rules(tree)
    assert r.workflow_file("build.yml").name == "build.yml"
    assert r.workflow_file("build").name == "build.yml"
    assert r.workflow_file("lint").name == "lint.yaml"
    assert "unknown workflow 'deploy'" in refused(r.workflow_file, "deploy")


def test_workflow_files_outside_the_workflow_directory_are_refused(tree: Path) -> None:
    r = rules(tree)
    assert "'..'" in refused(r.workflow_file, "../outside.yml")
    assert "relative" in refused(r.workflow_file, str(tree / "outside.yml"))
    (tree / "workflows" / "linked.yml").symlink_to(tree / "outside.yml")
    assert "outside the workflow directory" in refused(r.workflow_file, "linked.yml")
