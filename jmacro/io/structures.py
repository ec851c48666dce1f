"""Readers of atomic structure files (host numpy): LAMMPS text dumps and VASP POSCARs.

Only what the alloy data needs: orthogonal boxes, one frame. Paths come from the user; nothing
is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np


class Structure(NamedTuple):
    """Atoms in an orthogonal periodic box.

    Attributes:
        types: ``(n,)`` int species codes (LAMMPS types; for a POSCAR, 1 + the index of the
            element in the header's element line).
        positions: ``(n, 3)`` Cartesian positions, Angstrom.
        box: ``(3,)`` box lengths, Angstrom.
        ids: ``(n,)`` one-based atom ids (the file's, or the order in a POSCAR).
        elements: element names of the types 1, 2, ... where the file says them, else ().
    """

    types: np.ndarray
    positions: np.ndarray
    box: np.ndarray
    ids: np.ndarray
    elements: tuple[str, ...] = ()


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} {path} does not exist; pass the path of the file.")


def read_lammps_dump(path: str | Path) -> Structure:
    """The first frame of a LAMMPS text dump with columns ``id type x y z`` (any order)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "LAMMPS dump")
    lines = path.read_text().splitlines()
    heads = {line.split()[1]: i for i, line in enumerate(lines) if line.startswith("ITEM:")}
    try:
        num_atoms = int(lines[heads["NUMBER"] + 1])
        bounds = np.array([lines[heads["BOX"] + 1 + a].split()[:2] for a in range(3)], float)
        atoms_at = heads["ATOMS"]
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{path} is not a LAMMPS text dump ({error!r}).") from error
    columns = lines[atoms_at].split()[2:]
    table = np.loadtxt(lines[atoms_at + 1 : atoms_at + 1 + num_atoms], ndmin=2)
    col = {name: table[:, columns.index(name)] for name in ("id", "type", "x", "y", "z")}
    order = np.argsort(col["id"])
    positions = np.stack([col["x"], col["y"], col["z"]], axis=1)[order] - bounds[:, 0]
    return Structure(
        types=col["type"][order].astype(np.int64),
        positions=positions,
        box=bounds[:, 1] - bounds[:, 0],
        ids=col["id"][order].astype(np.int64),
    )


def read_poscar(path: str | Path) -> Structure:
    """A VASP 5 POSCAR with an orthogonal cell, direct or Cartesian coordinates."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "POSCAR")
    lines = path.read_text().splitlines()
    scale = float(lines[1].split()[0])
    cell = scale * np.array([line.split()[:3] for line in lines[2:5]], float)
    if np.any(np.abs(cell - np.diag(np.diag(cell))) > 1e-8):
        raise ValueError(f"{path}: only orthogonal cells are supported, got {cell.tolist()}.")
    elements = tuple(lines[5].split())
    counts = [int(c) for c in lines[6].split()]
    start = 8 if lines[7].strip()[0] in "Ss" else 7  # optional "Selective dynamics" line
    direct = lines[start].strip()[0] in "Dd"
    num_atoms = sum(counts)
    coords = np.array(
        [line.split()[:3] for line in lines[start + 1 : start + 1 + num_atoms]], float
    )
    positions = coords @ cell if direct else coords * scale
    return Structure(
        types=np.repeat(np.arange(1, len(counts) + 1), counts),
        positions=positions,
        box=np.diag(cell).copy(),
        ids=np.arange(1, num_atoms + 1),
        elements=elements,
    )


__all__ = ["Structure", "read_lammps_dump", "read_poscar"]
