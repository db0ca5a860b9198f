"""A process's vDSO as the time fault patches it, read from the node's /proc without stopping the process.

The vDSO is the small ELF image the kernel maps into every process; the C
library (and Go's runtime) call its ``__vdso_clock_gettime`` and
``__vdso_gettimeofday`` instead of making the system call. ``read_layout``
finds it in /proc/PID/maps, reads it through /proc/PID/mem, checks it is an
x86_64 image, finds the two entries in its dynamic symbol table (each must
hold at least the 12 bytes the jump takes), and picks a free page for the
replacement functions: the middle of the largest gap of the address space,
never the gap below the stack (it grows into it). The daemon journals all of
it before the helper writes anything. Blocking: run it off the event loop.
"""

from __future__ import annotations

import dataclasses
import struct

from ..errors import FailedPrecondition, NotFound

PATCH_LEN = 12  # movabs $replacement, %rax; jmp *%rax
JUMP_PREFIX = b"\x48\xb8"
JUMP_SUFFIX = b"\xff\xe0"
ENTRIES = ("__vdso_clock_gettime", "__vdso_gettimeofday")  # in the helper's order
PAGE = 4096
IMAGE_LIMIT = 1 << 20  # a vDSO is a few KiB; more is not one
EM_X86_64 = 62
MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 62: "x86_64", 183: "aarch64",
            243: "riscv", 258: "loongarch"}
SHT_DYNSYM = 11
STT_FUNC = 2
PT_LOAD = 1
LOW_LIMIT = 1 << 32  # the page goes above the first 4 GiB: programs assume that space is theirs
HIGH_LIMIT = 1 << 47  # x86_64's user address space (4-level paging)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the helper writes in one process, and what it replaces there."""

    vdso: int  # start of the [vdso] mapping
    sites: tuple[tuple[int, str], ...]  # (address, hex of the PATCH_LEN original bytes) for each of ENTRIES
    page: int  # a free page for the replacement functions


def read_layout(pid: int) -> Layout:
    """The layout of process ``pid`` (a host pid); NotFound when it is gone, FailedPrecondition when its
    architecture or vDSO is not one the helper handles (naming it)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = [_mapping(line) for line in f.read().splitlines() if line.strip()]
    except FileNotFoundError:
        raise NotFound(f"process {pid} has exited") from None
    vdso = [m for m in maps if m[2] == "[vdso]"]
    if not vdso:
        raise FailedPrecondition(f"process {pid} has no vDSO mapped (a kernel booted with vdso=0, or a program "
                                 "that unmapped it): nothing to patch")
    start, end, _ = vdso[0]
    if not 0 < end - start <= IMAGE_LIMIT:
        raise FailedPrecondition(f"process {pid}: its vDSO spans {end - start} bytes, not a vDSO layout handled")
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(start)
            image = mem.read(end - start)
    except FileNotFoundError:
        raise NotFound(f"process {pid} has exited") from None
    except OSError as err:
        raise FailedPrecondition(f"cannot read the vDSO of process {pid}: {err.strerror}") from None
    sites = tuple((start + offset, original.hex()) for offset, original in _entries(image, pid))
    return Layout(start, sites, _free_page(maps, pid))


def _mapping(line: str) -> tuple[int, int, str]:
    fields = line.split(maxsplit=5)
    low, high = fields[0].split("-")
    return int(low, 16), int(high, 16), fields[5].strip() if len(fields) > 5 else ""


def _entries(image: bytes, pid: int) -> list[tuple[int, bytes]]:
    """(offset in the image, original bytes) of each of ENTRIES."""
    if image[:4] != b"\x7fELF":
        raise FailedPrecondition(f"process {pid}: its vDSO is not an ELF image; not a vDSO layout handled")
    machine = struct.unpack_from("<H", image, 18)[0] if len(image) >= 20 else 0
    if image[4] != 2 or machine != EM_X86_64:
        name = MACHINES.get(machine, f"machine {machine}")
        width = "64-bit" if image[4] == 2 else "32-bit"
        raise FailedPrecondition(f"process {pid} runs a {width} {name} vDSO: the time fault patches x86_64 (64-bit) "
                                 "vDSOs only")
    try:
        symbols = _dynamic_symbols(image)
    except (struct.error, IndexError, UnicodeDecodeError):
        raise FailedPrecondition(f"process {pid}: its vDSO's symbol table cannot be read; not a vDSO layout "
                                 "handled") from None
    base = _load_address(image)
    found = []
    for name in ENTRIES:
        if name not in symbols:
            raise FailedPrecondition(f"process {pid}: its vDSO has no {name}; not a vDSO layout handled")
        value, size = symbols[name]
        offset = value - base
        if size < PATCH_LEN or not 0 <= offset <= len(image) - PATCH_LEN:
            raise FailedPrecondition(f"process {pid}: its vDSO's {name} is {size} bytes long, too short for the "
                                     f"{PATCH_LEN}-byte jump; not a vDSO layout handled")
        original = image[offset:offset + PATCH_LEN]
        if original.startswith(JUMP_PREFIX) and original.endswith(JUMP_SUFFIX):
            raise FailedPrecondition(f"process {pid} already has its clocks shifted ({name} starts with a jump): "
                                     "one time fault at a time per process")
        found.append((offset, original))
    return found


def _load_address(image: bytes) -> int:
    """The first PT_LOAD's address: the vDSO's symbols are relative to it (0 on current kernels)."""
    phoff, = struct.unpack_from("<Q", image, 32)
    phentsize, phnum = struct.unpack_from("<HH", image, 54)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", image, phoff + i * phentsize)
        if p_type == PT_LOAD:
            return int(struct.unpack_from("<Q", image, phoff + i * phentsize + 16)[0]) - int(
                struct.unpack_from("<Q", image, phoff + i * phentsize + 8)[0])  # p_vaddr - p_offset
    return 0


def _dynamic_symbols(image: bytes) -> dict[str, tuple[int, int]]:
    """name -> (st_value, st_size) of the functions in the image's .dynsym."""
    shoff, = struct.unpack_from("<Q", image, 40)
    shentsize, shnum = struct.unpack_from("<HH", image, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, shoff + i * shentsize) for i in range(shnum)]
    symbols: dict[str, tuple[int, int]] = {}
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != SHT_DYNSYM or not entsize:
            continue
        strings = sections[link][4]
        for at in range(offset, offset + size, entsize):
            st_name, st_info, _, _, st_value, st_size = struct.unpack_from("<IBBHQQ", image, at)
            if st_info & 0xF != STT_FUNC:
                continue
            name_end = image.index(b"\0", strings + st_name)
            symbols[image[strings + st_name:name_end].decode()] = (st_value, st_size)
    return symbols


def _free_page(maps: list[tuple[int, int, str]], pid: int) -> int:
    """The middle of the largest gap between mappings (above LOW_LIMIT, and never the gap the stack grows into)."""
    spans = sorted((low, high, name) for low, high, name in maps if high <= HIGH_LIMIT)
    best = (0, 0)
    previous_end = LOW_LIMIT
    for low, high, name in spans:
        if name != "[stack]" and low - previous_end > best[1] - best[0]:
            best = (previous_end, low)
        previous_end = max(previous_end, high)
    low, high = best
    if high - low < 3 * PAGE:
        raise FailedPrecondition(f"process {pid} has no free page in its address space for the replacement clocks")
    return (low + (high - low) // 2) // PAGE * PAGE
