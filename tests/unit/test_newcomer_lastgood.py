"""The last good version of each object survives a restart (issue 16 item 4): a store
and a directory source with the state directory's copy (config/lastgood.py), restarted
by building them again on the same directories, as `meshd serve` does at start."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from controlplane.config.lastgood import LastGood
from controlplane.config.store import ConfigStore
from controlplane.sources.directory import DirectorySource

GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop.example.com"]
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: ["shop.example.com"]
  gateways: [gw]
  http:
  - route:
    - destination: {host: %s, port: {number: 80}}
"""
VS_INVALID = VS.replace("destination: {host: %s", "destination: {hots: %s")


class Meshd:
    """What `meshd serve` builds over a config directory, with its state directory."""

    def __init__(self, config: Path, home: Path):
        self.restored_counts: list[dict] = []
        self.store = ConfigStore()
        self.store.last_good = LastGood(home / "lastgood", config, on_restored=self.restored_counts.append)
        self.source = DirectorySource(config, self.store)
        self.source.load()
        self.store.last_good.prune()
        self.store.last_good.flush()  # what its run task writes shortly after a change

    def edit(self) -> None:
        """The directory source's next scan, at once."""
        self.source._apply(*self.source._changes(settle=False))
        self.store.last_good.flush()

    def objects(self) -> dict[str, str]:
        return {str(k): o.generation for k, o in self.store.snapshot().objects.items()}


def setup(tmp_path: Path) -> tuple[Path, Path]:
    config, home = tmp_path / "config", tmp_path / "home"
    config.mkdir()
    (config / "gateway.yaml").write_text(GATEWAY)
    (config / "vs.yaml").write_text(VS % "web")
    return config, home


def test_an_object_invalid_at_start_is_restored_as_it_was_and_reported_until_fixed(tmp_path):
    config, home = setup(tmp_path)
    first = Meshd(config, home)
    before, version = first.objects(), first.store.snapshot().version
    (config / "vs.yaml").write_text(VS_INVALID % "web")  # edited while meshd was down

    again = Meshd(config, home)
    assert again.objects() == before  # the same generations ...
    assert again.store.snapshot().version == version  # ... so the same versions for Envoy
    key = next(k for k in again.store.snapshot().objects if k.kind == "VirtualService")
    assert set(again.store.restored()) == {key}
    assert again.restored_counts[-1] == {"VirtualService": 1}
    assert [r.key for r in again.store.rejections()] == [key]  # the invalid file is still reported

    (config / "vs.yaml").write_text(VS % "web-v2")  # fixed
    again.edit()
    assert again.store.restored() == {}
    assert again.restored_counts[-1] == {"VirtualService": 0}  # the gauge falls back to 0
    assert again.store.snapshot().objects[key].spec["http"][0]["route"][0]["destination"]["host"] == "web-v2"
    # and the fix is the new last good version
    (config / "vs.yaml").write_text(VS_INVALID % "web")
    third = Meshd(config, home)
    assert third.store.snapshot().objects[key].spec["http"][0]["route"][0]["destination"]["host"] == "web-v2"


def test_a_file_that_is_not_yaml_at_start_gets_all_its_objects_back(tmp_path):
    config, home = setup(tmp_path)
    before = Meshd(config, home).objects()
    (config / "gateway.yaml").write_text("kind: Gateway\n  : [unclosed\n")
    again = Meshd(config, home)
    assert again.objects() == before
    assert {k.kind for k in again.store.restored()} == {"Gateway"}


def test_an_invalid_edit_while_running_is_kept_across_the_restart(tmp_path):
    config, home = setup(tmp_path)
    running = Meshd(config, home)
    before = running.objects()
    (config / "vs.yaml").write_text(VS_INVALID % "web")
    running.edit()  # kept in memory while it runs; the copy keeps the last good one too
    assert running.objects() == before
    assert Meshd(config, home).objects() == before


def test_deleted_objects_and_files_never_come_back(tmp_path):
    config, home = setup(tmp_path)
    running = Meshd(config, home)
    (config / "vs.yaml").write_text("# the operator deleted the VirtualService\n")
    running.edit()
    (config / "gateway.yaml").unlink()
    running.edit()
    (config / "vs.yaml").write_text(VS_INVALID % "web")
    (config / "gateway.yaml").write_text("not: [yaml")
    again = Meshd(config, home)
    assert again.objects() == {} and again.store.restored() == {}


def test_copies_of_files_gone_while_meshd_was_down_are_deleted(tmp_path):
    config, home = setup(tmp_path)
    Meshd(config, home)
    (config / "gateway.yaml").unlink()
    Meshd(config, home)  # starts without the file: its copy is pruned
    (config / "gateway.yaml").write_text("not: [yaml")  # a new file at the same path, broken
    assert {k.kind for k in Meshd(config, home).store.snapshot().objects} == {"VirtualService"}


def test_a_copy_that_is_not_valid_any_more_is_not_restored(tmp_path):
    """A newer meshd may validate more strictly than the one that wrote the copy."""
    config, home = setup(tmp_path)
    lg = Meshd(config, home).store.last_good
    copy = next(p for p in lg.dir.glob("*.json") if b"VirtualService" in p.read_bytes())
    doc = json.loads(copy.read_bytes())
    doc["objects"][0]["spec"]["http"][0]["route"][0]["destination"]["port"]["number"] = 700000
    copy.write_text(json.dumps(doc))
    (config / "vs.yaml").write_text(VS_INVALID % "web")
    assert {k.kind for k in Meshd(config, home).store.snapshot().objects} == {"Gateway"}


def test_copies_are_private_whole_files_per_config_directory(tmp_path):
    config, home = setup(tmp_path)
    lg = Meshd(config, home).store.last_good
    files = sorted(lg.dir.glob("*.json"))
    assert sorted(p.name for p in lg.dir.iterdir()) == sorted([*(p.name for p in files), "config-dir"])
    assert len(files) == 2  # no temporary file left behind
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(lg.dir.parent.stat().st_mode) == 0o700
    # another config directory under the same $MESHD_HOME neither sees nor prunes these
    other = tmp_path / "other"
    other.mkdir()
    (other / "gw.yaml").write_text(GATEWAY)
    theirs = Meshd(other, home).store.last_good.dir
    assert sorted(lg.dir.glob("*.json")) == files
    # a config directory that is gone (a temporary one) loses its folder at the next start
    (other / "gw.yaml").unlink()
    other.rmdir()
    Meshd(config, home)
    assert not theirs.exists() and sorted(lg.dir.glob("*.json")) == files
    assert all(json.loads(p.read_bytes())["location"].startswith(os.fspath(config)) for p in files)


def test_kubernetes_objects_are_not_copied(tmp_path):
    import yaml

    from controlplane.config.objects import Origin
    from controlplane.config.parse import parse_document

    store = ConfigStore()
    store.last_good = LastGood(tmp_path / "lastgood", tmp_path / "config")
    doc = yaml.safe_load(GATEWAY)
    loc = "/apis/networking.istio.io/v1/namespaces/shop/gateways/gw"
    store.replace_location(loc, [parse_document(doc, Origin("kubernetes", loc))])
    store.last_good.flush()
    assert not (tmp_path / "lastgood").exists()
