"""Simulated patterns of a whole library: :class:`PatternSet` and :func:`simulate_library`."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from xrdid.config import Grid
from xrdid.data.library import Library
from xrdid.errors import InputError
from xrdid.outputs import atomic_dir, require
from xrdid.xrd.diffraction import Reflections, simulate_one
from xrdid.xrd.measured import wavelength_angstrom

if TYPE_CHECKING:
    from typing import Any

    from xrdid.xrd.crystal import Crystal
    from xrdid.xrd.diffraction import Reflections, SimulationSettings


log = logging.getLogger(__name__)
@dataclass
class PatternSet:
    """The ``simulate`` stage's output: profiles (memory-mapped) and reflections of every library entry.

    Files in the folder: ``profiles.npy`` float32 (n_entries, n_points), each row max-normalised;
    ``reflections.npz`` with ``offsets`` (n_entries + 1), ``two_theta``, ``intensity``
    (strongest = 100 per entry), ``hkl`` (m, 3), ``multiplicity``, ``d_spacing``;
    ``meta.json`` with ``ids`` (library order), the grid and the settings.

    Examples
    --------
    >>> ps = PatternSet.load("data/patterns")  # doctest: +SKIP
    >>> ps.profiles.shape, ps.peaks(0)[0][:3]  # doctest: +SKIP
    """

    ids: list[str]
    grid: Grid
    profiles: np.ndarray
    offsets: np.ndarray
    two_theta: np.ndarray
    intensity: np.ndarray
    hkl: np.ndarray
    multiplicity: np.ndarray
    d_spacing: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> PatternSet:
        folder = require(folder, "meta.json", "xrdid simulate")
        try:
            meta = json.loads((folder / "meta.json").read_text())
            refl = np.load(folder / "reflections.npz")
            profiles = np.load(folder / "profiles.npy", mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise InputError(folder, f"not a simulated pattern set ({exc})") from exc
        return cls(
            ids=list(meta["ids"]),
            grid=Grid.from_params(meta["grid"]),
            profiles=profiles,
            meta=meta,
            **{k: refl[k] for k in ("offsets", "two_theta", "intensity", "hkl", "multiplicity", "d_spacing")},
        )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: list[str]) -> np.ndarray:
        """Row of each id in this set (e.g. to put profiles in a model's class order)."""
        position = {entry: i for i, entry in enumerate(self.ids)}
        return np.array([position[i] for i in ids], dtype=np.int64)

    def peaks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(2θ, intensity) of entry ``index``'s reflections."""
        sl = slice(self.offsets[index], self.offsets[index + 1])
        return self.two_theta[sl], self.intensity[sl]

    def padded_peaks(self, max_peaks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All entries' reflections as (n_entries, P) arrays, strongest first, padded with NaN / 0.

        ``max_peaks`` keeps only the strongest P reflections of each entry (P = the largest count
        when None); handy for rendering many augmented patterns at once.
        """
        counts = np.diff(self.offsets)
        width = int(counts.max()) if max_peaks is None else int(min(max_peaks, counts.max()))
        entry = np.repeat(np.arange(len(self)), counts)
        # rank of each reflection within its entry by decreasing intensity
        order = np.lexsort((-self.intensity, entry))
        rank = np.arange(len(order)) - self.offsets[entry[order]]
        keep = rank < width
        two_theta = np.full((len(self), width), np.nan, dtype=np.float32)
        intensity = np.zeros((len(self), width), dtype=np.float32)
        two_theta[entry[order][keep], rank[keep]] = self.two_theta[order][keep]
        intensity[entry[order][keep], rank[keep]] = self.intensity[order][keep]
        return two_theta, intensity


def _simulate_worker(args: tuple[Crystal, SimulationSettings]) -> tuple[Reflections | None, np.ndarray | None, str]:
    crystal, settings = args
    try:
        refl, profile = simulate_one(crystal, settings)
        if len(refl) == 0:
            return None, None, "no reflections in the 2θ range"
        return refl, profile, ""
    except (ValueError, MemoryError) as exc:
        return None, None, str(exc)


def simulate_library(
    library_dir: str | Path,
    out_dir: str | Path,
    settings: SimulationSettings,
    workers: int = 2,
    progress: bool = True,
) -> PatternSet:
    """Simulate every entry of a library folder into ``out_dir`` (see :class:`PatternSet`).

    Entries that fail are logged and written to ``out_dir/rejects.csv``; they are left out of the set.
    When ``out_dir`` already holds patterns simulated with the same settings (DVC keeps it in place,
    ``persist``), entries whose CIF is unchanged (same sha256 in the library index) are copied from
    it: a library that grows by a thousand CIFs simulates those thousand.
    """

    library = Library.load(library_dir)
    out = Path(out_dir)
    n = len(library)
    sha = dict(zip(library.index["id"].astype(str), library.index["sha256"])) if "sha256" in library.index else {}
    meta = _meta(settings)
    results: list[tuple[Reflections | None, np.ndarray | None, str] | None] = [None] * n
    for i, found in _previous(out, meta, [sha.get(entry, "") for entry in library.ids], library.ids).items():
        results[i] = found
    todo = [i for i in range(n) if results[i] is None]
    jobs = ((library.crystal(i), settings) for i in todo)
    bar = tqdm(total=len(todo), desc="simulate", unit="structure", disable=not progress)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for i, result in zip(todo, pool.map(_simulate_worker, jobs, chunksize=8)):
                results[i] = result
                bar.update()
    else:
        for i, job in zip(todo, jobs):
            results[i] = _simulate_worker(job)
            bar.update()
    bar.close()

    ok = [i for i, (r, _, _) in enumerate(results) if r is not None]
    rejects = [(library.ids[i], results[i][2]) for i in range(n) if results[i][0] is None]
    for entry, reason in rejects:
        log.warning("simulate: %s rejected: %s", entry, reason)
    if not ok:
        example = f" (e.g. {rejects[0][0]}: {rejects[0][1]})" if rejects else ""
        raise InputError(library_dir, f"no library entry could be simulated{example}")
    with atomic_dir(out) as tmp:
        with open(tmp / "rejects.csv", "w") as fh:
            fh.write("id,reason\n")
            fh.writelines(f"{i},{json.dumps(reason)}\n" for i, reason in rejects)

        profiles = np.lib.format.open_memmap(tmp / "profiles.npy", mode="w+", dtype=np.float32,
                                             shape=(len(ok), settings.grid.n_points))
        for row, i in enumerate(ok):
            profiles[row] = results[i][1]
        profiles.flush()
        refls = [results[i][0] for i in ok]
        np.savez(
            tmp / "reflections.npz",
            offsets=np.r_[0, np.cumsum([len(r) for r in refls])].astype(np.int64),
            two_theta=np.concatenate([r.two_theta for r in refls]).astype(np.float32),
            intensity=np.concatenate([r.intensity for r in refls]).astype(np.float32),
            hkl=np.concatenate([r.hkl for r in refls]).astype(np.int16),
            multiplicity=np.concatenate([r.multiplicity for r in refls]).astype(np.int32),
            d_spacing=np.concatenate([r.d_spacing for r in refls]).astype(np.float32),
        )
        hashes = [sha.get(library.ids[i], "") for i in ok]
        entries = hashlib.sha256("\n".join(hashes).encode()).hexdigest()  # an edited CIF changes the set
        meta = {"ids": [library.ids[i] for i in ok], **meta, "n_rejected": len(rejects), "entries_sha256": entries}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        np.save(tmp / "sha256.npy", np.array(hashes))  # what a rebuild may reuse
    reused = n - len(todo)
    log.info("simulate: %d patterns written to %s (%d rejected)%s", len(ok), out, len(rejects),
             f"; {reused} unchanged entries copied from the previous run" if reused else "")
    return PatternSet.load(out)


def _meta(settings: SimulationSettings) -> dict[str, Any]:
    """The settings part of ``meta.json``: patterns simulated with equal ones are interchangeable."""
    return {
        "grid": settings.grid.to_dict(),
        "wavelength": settings.wavelength,
        "wavelength_angstrom": wavelength_angstrom(settings.wavelength),
        "reflection_wavelength_angstrom": settings.reflection_wavelength,
        "doublet": settings.doublet,
        "profile": settings.profile,
        "eta": settings.eta,
        "caglioti": dict(zip("UVW", settings.caglioti)),
        "debye_waller": settings.debye_waller,
    }


def _previous(out: Path, meta: dict[str, Any], sha256: list[str],
              ids: list[str]) -> dict[int, tuple[Reflections, np.ndarray, str]]:
    """Results of the previous run in ``out`` for the entries (by position in ``ids``) whose CIF hash is unchanged."""
    try:
        old = PatternSet.load(out)
        hashes = np.load(out / "sha256.npy").tolist()
    except (OSError, ValueError, InputError):
        return {}
    if json.loads(json.dumps(meta)) != {k: old.meta.get(k) for k in meta} or len(hashes) != len(old.ids):
        return {}
    where = {(entry, h): row for row, (entry, h) in enumerate(zip(old.ids, hashes)) if h}
    found = {}
    for i, key in enumerate(zip(ids, sha256)):
        row = where.get(key)
        if row is not None:
            sl = slice(int(old.offsets[row]), int(old.offsets[row + 1]))
            refl = Reflections(*(np.asarray(a[sl]) for a in (old.two_theta, old.intensity, old.hkl, old.multiplicity,
                                                            old.d_spacing)))
            found[i] = (refl, np.array(old.profiles[row]), "")
    return found
