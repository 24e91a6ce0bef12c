"""Checks an HDF5 file's manifest attribute before libhdf5 reads it, so corrupt files cannot hang evsim.

Why this exists
---------------
The manifest of an ``.h5`` model is a variable-length string attribute.  Its value is not
stored in the object header but in a *global heap collection* (a block starting with
``GCOL``); the attribute holds only a heap ID (sequence length, collection address, object
index).  To read the value libhdf5 decodes the whole collection
(``H5HG__cache_heap_deserialize``) with a loop that steps from one object to the next by
each object's declared size.  An object with index 0 (free space) that declares size 0 does
not advance it, and sizes that wrap the pointer arithmetic send it backwards: libhdf5 then
spins at 100 % CPU for ever (libhdf5 1.14 and 2.0, found by a fuzz campaign; 8 bytes
inserted anywhere in the collection are enough).

What it does
------------
:func:`check_string_attribute` finds the attribute's heap ID by reading the object header
itself (object header versions 1 and 2, continuation chunks, attribute message versions 1-3),
then walks the collection exactly as libhdf5 would and refuses it unless every object lies
inside the collection and the walk advances, the referenced object exists and is at least as
long as the declared string, and the string fits the memory limit.  When the attribute
cannot be located that way (dense attribute storage, shared messages) it falls back to
checking *every* ``GCOL`` block in the file.  Everything is plain reads of a few kB with
bounded loops; it costs well under a millisecond on a normal file (``docs/format.md``,
"Robustness").
"""
from __future__ import annotations

import io
import mmap
from pathlib import Path

from .errors import ContainerError, ResourceLimitError, describe

__all__ = ["check_string_attribute", "check_global_heap", "check_all_heaps"]

_GCOL = b"GCOL"
_MIN_COLLECTION = 4096  # H5HG_MINSIZE: libhdf5 reads at least this much of a collection
_MAX_CHUNKS = 256  # object header chunks followed before giving up (a continuation loop)
_ATTRIBUTE, _CONTINUATION = 0x000C, 0x0010


class _Corrupt(Exception):
    """Internal: the structure is malformed; the message says how."""


def _uint(buf: bytes, offset: int, size: int) -> int:
    if offset < 0 or offset + size > len(buf):
        raise _Corrupt("a field past the end of its block")
    return int.from_bytes(buf[offset:offset + size], "little")


def _read(fh, address: int, size: int, filesize: int) -> bytes:
    if address < 0 or size < 0 or address + size > filesize:
        raise _Corrupt(f"a block at {address} of {size} bytes outside the file ({filesize} bytes)")
    fh.seek(address)
    return fh.read(size)


# --------------------------------------------------------------------------- global heap
def check_global_heap(fh, address: int, filesize: int, sizeof_size: int, index: int | None = None) -> int:
    """Walk the global heap collection at ``address`` the way libhdf5 decodes it.

    Returns the size of object ``index`` (0 when ``index`` is None).  Raises ``_Corrupt``
    if libhdf5 would loop, step outside the collection, or not find the object.
    """
    header = 8 + sizeof_size
    head = _read(fh, address, header, filesize)
    if head[:4] != _GCOL or head[4] != 1:
        raise _Corrupt("no global heap collection (signature GCOL, version 1) where the attribute points")
    size = _uint(head, 8, sizeof_size)
    if size < header or address + size > filesize:
        raise _Corrupt(f"a global heap collection declaring {size} bytes, beyond the end of the file")
    chunk = _read(fh, address, max(size, min(_MIN_COLLECTION, filesize - address)), filesize)[:size]
    obj_header = 8 + sizeof_size
    pos, found = header, None
    while pos < size:
        if pos + obj_header > size:  # the tail too small for an object header is free space
            break
        idx = _uint(chunk, pos, 2)
        obj_size = _uint(chunk, pos + 8, sizeof_size)
        need = obj_size if idx == 0 else obj_header + (-(-obj_size // 8) * 8)
        if need <= 0 or pos + need > size:
            raise _Corrupt(f"heap object {idx} at offset {pos} declaring {obj_size} bytes, which "
                           + ("does not advance the decoder" if need <= 0 else "runs past the collection"))
        if idx == index and idx != 0:
            found = obj_size
        pos += need
    if index is not None and found is None:
        raise _Corrupt(f"no heap object {index} in the collection the attribute points to")
    return found or 0


def _scan_all_heaps(fh, filesize: int, sizeof_size: int) -> None:
    """Fallback: check every block in the file that starts like a global heap collection."""
    if filesize == 0:
        return
    if isinstance(fh, io.BytesIO):  # an HDF5 file held in memory (a .keras member)
        _scan_view(fh, fh.getbuffer().tobytes(), filesize, sizeof_size)
        return
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
        _scan_view(fh, view, filesize, sizeof_size)


def _scan_view(fh, view, filesize: int, sizeof_size: int) -> None:
    at = view.find(_GCOL)
    while at >= 0:
        if at + 5 <= filesize and view[at + 4] == 1:
            check_global_heap(fh, at, filesize, sizeof_size)
        at = view.find(_GCOL, at + 1)


def check_all_heaps(f, path, source=None) -> None:
    """Refuse a file any of whose global heap collections would make libhdf5 spin.

    Every variable-length string (attribute or dataset) lives in a global heap collection;
    call this before reading such strings whose location :func:`check_string_attribute` does
    not pin down (e.g. a Keras file's ``layer_names`` / ``weight_names`` / ``keras_version``).
    The scan reads the file once (a memory map); it costs milliseconds per 100 MB.

    Parameters
    ----------
    f : h5py.File
        The open file (for its address and length sizes).
    path : str or Path
        Named in the error; read when ``source`` is None.
    source : bytes, optional
        The file's bytes when it is held in memory (a member of an archive).

    Raises
    ------
    ContainerError
        A malformed global heap collection.
    """
    _, sizeof_size = f.id.get_create_plist().get_sizes()
    try:
        if source is not None:
            _scan_all_heaps(io.BytesIO(source), len(source), sizeof_size)
        else:
            with open(path, "rb") as fh:
                _scan_all_heaps(fh, Path(path).stat().st_size, sizeof_size)
    except _Corrupt as exc:
        raise ContainerError(describe(str(path), "readable HDF5 strings",
                                      f"a corrupted file ({exc})", "re-export the model")) from None


# --------------------------------------------------------------------------- object header
def _attribute_value(message: bytes, name: bytes) -> bytes | None:
    """The raw value bytes of an attribute message if it is named ``name``."""
    version = message[0] if message else 0
    name_size, type_size, space_size = (_uint(message, o, 2) for o in (2, 4, 6))
    if version == 1:
        pad = lambda n: -(-n // 8) * 8  # noqa: E731
        start = 8
    elif version in (2, 3):
        pad = lambda n: n  # noqa: E731
        start = 8 if version == 2 else 9
    else:
        raise _Corrupt(f"an attribute message of version {version}")
    if message[start:start + name_size].rstrip(b"\0") != name:
        return None
    offset = start + pad(name_size) + pad(type_size) + pad(space_size)
    if offset > len(message):
        raise _Corrupt("an attribute message shorter than its declared parts")
    return message[offset:]


def _find_attribute(fh, address: int, filesize: int, sizeof_addr: int, sizeof_size: int,
                    name: bytes) -> bytes | None:
    """The value bytes of attribute ``name`` in the object header at ``address``, or None."""
    first = _read(fh, address, min(16, filesize - address), filesize)
    chunks: list[tuple[int, int]] = []
    if first[:4] == b"OHDR":
        version, flags = first[4], first[5]
        if version != 2:
            raise _Corrupt(f"an object header of version {version}")
        offset = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
        width = 1 << (flags & 0x03)
        size = _uint(_read(fh, address + offset, width, filesize), 0, width)
        chunks.append((address + offset + width, size))
        v2, order = True, bool(flags & 0x04)
    elif first[:1] == b"\x01":
        chunks.append((address + 16, _uint(first, 8, 4)))
        v2, order = False, False
    else:
        raise _Corrupt("no object header (version 1 or OHDR) at the root group's address")
    seen: set[int] = set()
    while chunks:
        start, size = chunks.pop(0)
        if start in seen or len(seen) >= _MAX_CHUNKS:
            raise _Corrupt("object header continuation chunks that loop")
        seen.add(start)
        block = _read(fh, start, size, filesize)
        prefix = (6 if order else 4) if v2 else 8
        pos = 0
        while pos + prefix <= len(block):
            if v2:
                kind, length, mflags = block[pos], _uint(block, pos + 1, 2), block[pos + 3]
            else:
                kind, length, mflags = _uint(block, pos, 2), _uint(block, pos + 2, 2), block[pos + 4]
            data = block[pos + prefix:pos + prefix + length]
            if len(data) < length:
                raise _Corrupt("an object header message running past its chunk")
            pos += prefix + length
            if kind == _CONTINUATION:
                target, extent = _uint(data, 0, sizeof_addr), _uint(data, sizeof_addr, sizeof_size)
                if v2:  # "OCHK" + messages + checksum
                    if _read(fh, target, 4, filesize) != b"OCHK" or extent < 8:
                        raise _Corrupt("an object header continuation without its OCHK signature")
                    chunks.append((target + 4, extent - 8))
                else:
                    chunks.append((target, extent))
            elif kind == _ATTRIBUTE and not mflags & 0x02:  # 0x02: a shared message, stored elsewhere
                value = _attribute_value(data, name)
                if value is not None:
                    return value
    return None


# --------------------------------------------------------------------------- public
def check_string_attribute(f, path, name: str, limit: int) -> None:
    """Refuse an attribute whose reading would make libhdf5 spin or allocate beyond ``limit``.

    Parameters
    ----------
    f : h5py.File
        The open file (only metadata that libhdf5 has already decoded is queried).
    path : str or Path
        The same file, read directly for the heap checks.
    name : str
        The root attribute, e.g. ``"evsim"``.
    limit : int
        Bytes the attribute's value may take (the memory limit).

    Raises
    ------
    ContainerError
        A malformed heap or object header, or not a scalar string.
    ResourceLimitError
        A declared string longer than ``limit``.
    """
    import h5py

    where = f"{path}, attribute '{name}'"
    attr = h5py.h5a.open(f.id, name.encode())
    space, dtype = attr.get_space(), attr.get_type()
    if space.get_simple_extent_type() != h5py.h5s.SCALAR:
        raise ContainerError(describe(where, "a scalar string (the JSON manifest)",
                                      f"an attribute of shape {attr.shape}"))
    variable = dtype.get_class() == h5py.h5t.VLEN or (
        isinstance(dtype, h5py.h5t.TypeStringID) and dtype.is_variable_str())
    if not variable:
        if dtype.get_size() > limit:
            raise ResourceLimitError(describe(where, f"at most {limit} bytes (EVSIM_MEMORY_LIMIT)",
                                              f"a declared string of {dtype.get_size()} bytes"))
        return
    sizeof_addr, sizeof_size = f.id.get_create_plist().get_sizes()
    root = h5py.h5o.get_info(f.id).addr
    try:
        with open(path, "rb") as fh:
            filesize = Path(path).stat().st_size
            value = _find_attribute(fh, root, filesize, sizeof_addr, sizeof_size, name.encode())
            if value is None:
                _scan_all_heaps(fh, filesize, sizeof_size)
                return
            length = _uint(value, 0, 4)
            heap, index = _uint(value, 4, sizeof_addr), _uint(value, 4 + sizeof_addr, 4)
            if length > limit:
                raise ResourceLimitError(describe(where, f"at most {limit} bytes (EVSIM_MEMORY_LIMIT)",
                                                  f"a declared string of {length} bytes"))
            if length == 0:
                return
            stored = check_global_heap(fh, heap, filesize, sizeof_size, index)
            if stored < length:
                raise _Corrupt(f"a string declaring {length} bytes in a heap object of {stored}")
    except _Corrupt as exc:
        raise ContainerError(describe(where, "a readable HDF5 string attribute",
                                      f"a corrupted file ({exc})", "re-export the model")) from None
