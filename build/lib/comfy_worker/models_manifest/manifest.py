"""The model manifest (``docker/models.yaml``): which files a worker needs, where they go, where they come from.

::

    version: 1
    models:
      - name: wan_2.1_vae.safetensors          # the file name ComfyUI's loaders show
        folder: vae                             # under MODELS_DIR (ComfyUI's models/ folder names)
        hub: {repo: Comfy-Org/Wan_2.2_ComfyUI_Repackaged, file: split_files/vae/wan_2.1_vae.safetensors}
        sha256: null                            # 64 hex digits, or null: the hub's LFS hash is used, or the
        size: null                              #   hash is recorded on first sync (see sync.py)
        groups: [comfyui_i2v, comfyui_t2v]      # task types / profiles that need it
      - name: RealESRGAN_x2plus.pth
        folder: upscale_models
        url: https://github.com/…/RealESRGAN_x2plus.pth
      - name: my_private_lora.safetensors       # neither hub nor url: placed by hand, only checked
        folder: loras

Every problem raises :class:`~comfy_worker.errors.ManifestInvalid` naming the entry and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from comfy_worker.errors import ManifestInvalid

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"name", "folder", "hub", "url", "sha256", "size", "groups", "note"}


@dataclass(frozen=True)
class HubSource:
    repo: str
    file: str
    revision: str = "main"
    repo_type: str = "model"

    def describe(self) -> str:
        return f"hf://{self.repo}/{self.file}@{self.revision}"


@dataclass(frozen=True)
class UrlSource:
    url: str

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class ModelEntry:
    name: str
    folder: str
    source: HubSource | UrlSource | None
    sha256: str | None = None
    size: int | None = None
    groups: tuple[str, ...] = ()
    note: str = ""

    @property
    def relpath(self) -> str:
        """``folder/name``: the path under MODELS_DIR, and the entry's key."""
        return f"{self.folder}/{self.name}"

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.folder / self.name


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: tuple[ModelEntry, ...]
    groups: tuple[str, ...] = field(default=())

    def select(self, groups: tuple[str, ...] | list[str] = ()) -> list[ModelEntry]:
        """Entries in any of ``groups`` (all entries when empty); an unknown group is refused by name."""
        wanted = [g for g in groups if g]
        if not wanted:
            return list(self.entries)
        unknown = sorted(set(wanted) - set(self.groups))
        if unknown:
            raise ManifestInvalid(
                f"{self.path}: unknown group(s) {', '.join(unknown)}; the manifest has: {', '.join(self.groups)}"
            )
        return [e for e in self.entries if set(e.groups) & set(wanted)]


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ManifestInvalid(f"cannot read model manifest {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ManifestInvalid(f"{path} is not valid YAML: {exc}") from exc
    return parse_manifest(raw, path)


def parse_manifest(raw: Any, path: Path) -> Manifest:
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ManifestInvalid(f"{path}: expected a mapping with a 'models' list")
    if raw.get("version", 1) != 1:
        raise ManifestInvalid(f"{path}: version {raw.get('version')!r} is not supported (expected 1)")
    entries: list[ModelEntry] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw["models"]):
        entry = _entry(item, f"{path}: models[{i}]")
        if entry.relpath in seen:
            raise ManifestInvalid(
                f"{path}: models[{i}] ({entry.relpath}) repeats models[{seen[entry.relpath]}]; list each file once"
            )
        seen[entry.relpath] = i
        entries.append(entry)
    groups = tuple(sorted({g for e in entries for g in e.groups}))
    return Manifest(path, tuple(entries), groups)


def _entry(item: Any, where: str) -> ModelEntry:
    if not isinstance(item, dict):
        raise ManifestInvalid(f"{where}: expected a mapping with name, folder and hub or url")
    name = item.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    unknown = sorted(set(item) - _ENTRY_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_ENTRY_KEYS))
        raise ManifestInvalid(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {allowed}")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ManifestInvalid(f"{where}: 'name' must be a file name without slashes, got {name!r}")
    folder = item.get("folder")
    if not isinstance(folder, str) or not folder or not _safe_relative(folder):
        raise ManifestInvalid(
            f"{where}: 'folder' must be a relative folder under the models directory (e.g. vae), got {folder!r}"
        )
    if "hub" in item and "url" in item:
        raise ManifestInvalid(f"{where}: give either 'hub' or 'url', not both")
    source: HubSource | UrlSource | None = None
    if "hub" in item:
        source = _hub(item["hub"], where)
    elif "url" in item:
        url = item["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ManifestInvalid(f"{where}: 'url' must be an http(s) URL, got {url!r}")
        source = UrlSource(url)
    sha = item.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
            raise ManifestInvalid(f"{where}: 'sha256' must be 64 hex digits or null, got {sha!r}")
        sha = sha.lower()
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ManifestInvalid(f"{where}: 'size' must be a positive number of bytes or null, got {size!r}")
    groups = item.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise ManifestInvalid(f"{where}: 'groups' must be a list of names, got {groups!r}")
    note = item.get("note") or ""
    if not isinstance(note, str):
        raise ManifestInvalid(f"{where}: 'note' must be text")
    return ModelEntry(name, folder.strip("/"), source, sha, size, tuple(groups), note)


def _hub(raw: Any, where: str) -> HubSource:
    if not isinstance(raw, dict):
        raise ManifestInvalid(f"{where}: 'hub' must be a mapping {{repo, file, revision}}")
    repo, file = raw.get("repo"), raw.get("file")
    if not isinstance(repo, str) or repo.count("/") != 1:
        raise ManifestInvalid(f"{where}: hub.repo must be 'owner/name', got {repo!r}")
    if not isinstance(file, str) or not file or not _safe_relative(file):
        raise ManifestInvalid(f"{where}: hub.file must be the file's path in the repository, got {file!r}")
    revision = raw.get("revision", "main")
    repo_type = raw.get("repo_type", "model")
    if not isinstance(revision, str) or not revision:
        raise ManifestInvalid(f"{where}: hub.revision must be a branch, tag or commit, got {revision!r}")
    if repo_type not in ("model", "dataset", "space"):
        raise ManifestInvalid(f"{where}: hub.repo_type must be model, dataset or space, got {repo_type!r}")
    extra = sorted(set(raw) - {"repo", "file", "revision", "repo_type"})
    if extra:
        raise ManifestInvalid(f"{where}: unknown hub field(s) {', '.join(extra)}")
    return HubSource(repo, file, revision, repo_type)


def _safe_relative(p: str) -> bool:
    pure = PurePosixPath(p)
    return not pure.is_absolute() and ".." not in pure.parts and "\\" not in p
