"""The prepared dataset: events stored once per user (CSR), instances as pointers, fixed candidates.

Layout (docs/design.md, "Storage: events once, instances as pointers"):

- Users are rows ``u = 0..U-1``. User ``u``'s events, sorted by time (stable), are
  ``events[user_offsets[u] : user_offsets[u+1]]``.
- Every event carries *codes*: positions in the raw-id tables ``item_ids``, ``cate_ids`` (all items and
  categories seen anywhere). Codes keep the raw identity (needed to export the released TSV format);
  the model sees *vocabulary indices*, looked up through ``item_index[code]`` etc. Index 0 is padding and
  every id unseen in training (the released rule, docs/protocol.md §2.4).
- An instance of a split is ``(user row, pos)``: the target is the user's event number ``pos`` (>= 1)
  and its history is the user's events ``0 .. pos-1``, all earlier events across every split.
- Evaluation candidates are fixed code matrices ``(n_instances, 1 + N)``, positive first, sampled once
  with a seed, so every model is scored on the very same candidates. ``candidates["test_uniform"]``
  (absent in datasets prepared without it) holds the test instances with uniformly drawn negatives.

Files: ``arrays.npz`` (uncompressed numpy arrays, no pickles) + ``meta.json``. A save goes to a temporary
folder renamed into place, so an interrupted run never leaves a half-written dataset that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from clsr.data.sources import DataError, MissingDataError

SPLITS = ("train", "valid", "test")
#: candidate sets scored on another split's instances: name -> the split whose instances they belong to
CANDIDATE_INSTANCES = {"test_uniform": "test"}


def instance_split(split: str) -> str:
    """The split whose instances a candidate set belongs to ("test_uniform" -> "test"; a split -> itself)."""
    return CANDIDATE_INSTANCES.get(split, split)


@dataclass
class Instances:
    """Pointers to targets: user row and position of the target event in that user's event list."""

    user: np.ndarray  # int32 (n,)
    pos: np.ndarray  # int32 (n,), >= 1

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class Candidates:
    """Fixed evaluation candidates as codes; column 0 is the positive."""

    item: np.ndarray  # int32 (n, 1+N)
    cate: np.ndarray  # int32 (n, 1+N)


@dataclass
class PreparedData:
    name: str
    user_offsets: np.ndarray  # int64 (U+1,)
    event_item: np.ndarray  # int32 (E,) item code
    event_cate: np.ndarray  # int32 (E,) category code
    event_ts: np.ndarray  # int64 (E,) raw time units
    user_ids: np.ndarray  # str (U,) raw user ids
    item_ids: np.ndarray  # str (I,) raw item ids, code -> raw
    cate_ids: np.ndarray  # str (C,) raw category ids
    user_index: np.ndarray  # int32 (U,) vocab index, 0 = unseen in train
    item_index: np.ndarray  # int32 (I,)
    cate_index: np.ndarray  # int32 (C,)
    instances: dict[str, Instances]
    candidates: dict[str, Candidates]  # valid, test, test_uniform (instances of test; may be absent)
    meta: dict = field(default_factory=dict)
    event_extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. synthetic ground truth

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.user_offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.event_item)

    @property
    def user_vocab_size(self) -> int:
        return int(self.user_index.max(initial=0)) + 1

    @property
    def item_vocab_size(self) -> int:
        return int(self.item_index.max(initial=0)) + 1

    @property
    def cate_vocab_size(self) -> int:
        return int(self.cate_index.max(initial=0)) + 1

    def event_user(self) -> np.ndarray:
        """User row of every event (E,)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int32), np.diff(self.user_offsets))

    def target_event(self, split: str) -> np.ndarray:
        """Global event index of each instance's target (`split` may name a candidate set, see `instance_split`)."""
        inst = self.instances[instance_split(split)]
        return self.user_offsets[inst.user] + inst.pos

    # ---- persistence -------------------------------------------------------------------------
    def save(self, folder: str | Path, extra_files: dict[str, Callable[[Path], None]] | None = None) -> Path:
        """Write arrays.npz + meta.json (+ `extra_files`: name -> writer(path)) atomically into `folder`."""
        folder = Path(folder)
        ensure_writable_dir(folder.parent)
        arrays: dict[str, np.ndarray] = {
            "user_offsets": self.user_offsets,
            "event_item": self.event_item,
            "event_cate": self.event_cate,
            "event_ts": self.event_ts,
            "user_ids": self.user_ids.astype(str),
            "item_ids": self.item_ids.astype(str),
            "cate_ids": self.cate_ids.astype(str),
            "user_index": self.user_index,
            "item_index": self.item_index,
            "cate_index": self.cate_index,
        }
        for split, inst in self.instances.items():
            arrays[f"{split}_user"] = inst.user
            arrays[f"{split}_pos"] = inst.pos
        for split, cand in self.candidates.items():
            arrays[f"{split}_cand_item"] = cand.item
            arrays[f"{split}_cand_cate"] = cand.cate
        for k, v in self.event_extra.items():
            arrays[f"extra_{k}"] = v
        meta = dict(self.meta)
        meta["name"] = self.name
        meta["splits"] = list(self.instances)
        meta["candidate_splits"] = list(self.candidates)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        except OSError as e:
            raise _unwritable(folder.parent, e) from None
        try:
            with open(tmp / "arrays.npz", "wb") as f:
                np.savez(f, **arrays)
            with open(tmp / "meta.json", "w") as f:
                json.dump(meta, f, indent=2, sort_keys=True, default=_json_default)
            for name, writer in (extra_files or {}).items():
                writer(tmp / name)
            _swap_into_place(tmp, folder)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                f"{folder}: writing the prepared dataset failed ({e.strerror or e}); nothing was changed there. "
                "Check free space and permissions, then run prepare again"
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "PreparedData":
        """Read a dataset written by `save`; a missing, truncated or foreign folder is a DataError naming it."""
        folder = Path(folder)
        npz_path, meta_path = folder / "arrays.npz", folder / "meta.json"
        again = rerun_hint(folder)
        if not npz_path.is_file() or not meta_path.is_file():
            absent = [p.name for p in (npz_path, meta_path) if not p.is_file()]
            raise MissingDataError(f"prepared dataset not found in {folder} (no {' or '.join(absent)}); {again} first")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: unreadable or corrupt ({_one_line(e)}); {again}") from None
        if not isinstance(meta, dict) or not {"name", "splits", "candidate_splits"} <= set(meta):
            raise DataError(
                f"{meta_path}: not the metadata of a prepared dataset (needs name, splits, candidate_splits); {again}"
            )
        try:
            a = map_npz(npz_path)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise DataError(f"{npz_path}: truncated or corrupt ({_one_line(e)}); {again}") from None
        try:
            instances = {s: Instances(a.pop(f"{s}_user"), a.pop(f"{s}_pos")) for s in meta["splits"]}
            candidates = {
                s: Candidates(a.pop(f"{s}_cand_item"), a.pop(f"{s}_cand_cate"))
                for s in meta["candidate_splits"]
            }
            extra = {k[len("extra_"):]: a.pop(k) for k in list(a) if k.startswith("extra_")}
            return cls(
                name=meta["name"],
                instances=instances,
                candidates=candidates,
                meta=meta,
                event_extra=extra,
                **a,
            )
        except (KeyError, TypeError) as e:
            raise DataError(f"{npz_path}: arrays do not match meta.json ({_one_line(e)}); {again}") from None


def map_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed ``.npz`` (as `np.savez` writes it), memory-mapped in place.

    ``np.load`` ignores ``mmap_mode`` for ``.npz`` files and reads every array into memory. Here each member is
    located in the zip (local header offset + header length), its ``.npy`` header parsed, and the data mapped
    copy-on-write: pages are read from the page cache on first touch, shared by every process that maps the
    same file (the ranks of a distributed run, the workers of a pipeline), and a write changes this process's
    copy only. Compressed members, which cannot be mapped, are read as ``np.load`` would.
    A truncated or foreign file raises ValueError, OSError or `zipfile.BadZipFile`.
    """
    path = Path(path)
    size = path.stat().st_size
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
            if info.compress_type != zipfile.ZIP_STORED:
                with z.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename}: bad local header")
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:  # a newer header format: read it the ordinary way
                with z.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            shape, fortran, dtype = read_header[version](f)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename}: holds Python objects, which are not loaded")
            offset = f.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes > size:
                raise ValueError(f"member {info.filename}: {nbytes} bytes announced, the file ends before")
            if nbytes == 0:
                out[name] = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
                continue
            mapped = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order="F" if fortran else "C")
            out[name] = mapped.view(np.ndarray)  # a plain array over the mapping (which it keeps alive)
    return out


def rerun_hint(folder: Path) -> str:
    """What to run to rebuild the prepared dataset in `folder` (named after its dataset)."""
    return f"re-run `python -m clsr prepare --dataset {folder.name}` (or `dvc repro protocol@{folder.name}`)"


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]


def _unwritable(folder: Path, err: OSError) -> DataError:
    return DataError(
        f"{folder}: cannot write the prepared dataset here ({err.strerror or err}); make the folder writable "
        "or choose another output folder (--out-dir)"
    )


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create `folder` if needed and check that files can be created in it; DataError naming it otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _unwritable(folder, e) from None
    return folder


def _swap_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished folder `tmp` onto `folder`; an old `folder` is set aside first and only deleted
    once the new one is in place (restored if the rename fails)."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, old / folder.name)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old / folder.name, folder)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on normal exit it gets `mode` and is renamed onto `path`.

    The temporary file is hidden (``.<name>.XXXX<suffix>``) and in the same folder, so the rename is
    atomic and readers never see half a file. If the block raises, the temporary file is removed and the
    exception propagates: `path` is left as it was (absent, or its previous content). `mode` is applied
    explicitly because ``mkstemp`` creates files readable by the owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file via a temporary sibling and rename, so readers never see half a file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    """`atomic_write_text` of `obj` as indented, key-sorted JSON (numpy values and paths allowed)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
