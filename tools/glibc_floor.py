#!/usr/bin/env python3
"""The oldest glibc a set of x86-64 ELF files can load on, and lowering it.

A program linked on Debian 12 (glibc 2.36) records, per symbol it takes from libc.so.6 or
libm.so.6, the glibc version that symbol carries there (`.gnu.version_r`), and the dynamic loader
refuses to start it where any of those versions is missing ("version `GLIBC_2.36' not found").
Most of a bundle's needs are 2.34 or older (pthread moved into libc in 2.34, so anything linked
since needs 2.34); a handful are newer only because Debian 12's libraries call functions glibc
added lately. This tool lists each file's needs and, with --lower FLOOR, rewrites the few that are
above FLOOR, in place:

- a symbol that also exists under an older version (`hypot` and `hypotf`, re-versioned in 2.35
  when their error handling moved; the same values) is bound to that older version;
- a symbol glibc added after FLOOR (`arc4random`, `arc4random_buf`: 2.36; `_dl_find_object`: 2.35)
  is renamed, by its first three bytes, to `rcg...` (`rcg4random`, `rcg4random_buf`,
  `rcg_find_object`) and left unversioned; `glibc_compat.c` defines those names, calling glibc's own
  function where the running glibc has it and an equivalent (getrandom, dl_iterate_phdr) where not.
  The caller adds that library to the file's DT_NEEDED (patchelf --add-needed).

Any other need above FLOOR is an error naming the file, the symbol and its version. Only the
version tables and the renamed symbols' name bytes change: no section moves, so nothing else in
the file does.

  glibc_floor.py FILE...                  each file's newest glibc need, and the overall one
  glibc_floor.py --lower 2.34 FILE...     rewrite needs above 2.34; prints the files it changed
  glibc_floor.py --max FILE...            just the overall newest need (e.g. 2.34)
"""
import struct
import sys

SHT_DYNSYM, SHT_GNU_VERSYM, SHT_GNU_VERNEED = 11, 0x6FFFFFFF, 0x6FFFFFFE
GLIBC_FILES = ("libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2", "libutil.so.1")

# symbol -> the older version it also has in every glibc since (bound to that one instead)
REBIND = {"hypot": "GLIBC_2.2.5", "hypotf": "GLIBC_2.2.5"}
# symbol -> the name glibc_compat.c defines for it (first three bytes replaced)
SHIM = {"arc4random": "rcg4random", "arc4random_buf": "rcg4random_buf", "_dl_find_object": "rcg_find_object"}


def version_key(v):
    return tuple(int(x) for x in v.split("."))


def elf_hash(name):
    h = 0
    for c in name.encode():
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


class ELF:
    """The dynamic symbol and version tables of a little-endian ELF64 file, editable in place."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.data = bytearray(f.read())
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2 or d[5] != 1:
            raise ValueError(f"{path}: not a little-endian 64-bit ELF file")
        shoff, = struct.unpack_from("<Q", d, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", d, 0x3A)
        self.sections = []
        for i in range(shnum):
            name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize)
            self.sections.append(dict(type=typ, offset=off, size=size, link=link, info=info, entsize=entsize))
        dynsym = next((s for s in self.sections if s["type"] == SHT_DYNSYM), None)
        self.versym = next((s for s in self.sections if s["type"] == SHT_GNU_VERSYM), None)
        self.verneed = next((s for s in self.sections if s["type"] == SHT_GNU_VERNEED), None)
        self.symbols = []  # (index, name offset, name)
        if dynsym is None:
            self.strtab = None
            return
        self.strtab = self.sections[dynsym["link"]]
        for i in range(dynsym["size"] // 24):
            st_name, st_info, st_other, st_shndx = struct.unpack_from("<IBBH", d, dynsym["offset"] + i * 24)
            self.symbols.append((i, st_name, self.string(st_name), st_shndx))

    def string(self, off):
        start = self.strtab["offset"] + off
        end = self.data.index(b"\0", start)
        return self.data[start:end].decode("utf-8", "replace")

    def symbol_version_index(self, i):
        return struct.unpack_from("<H", self.data, self.versym["offset"] + 2 * i)[0] & 0x7FFF

    def needs(self):
        """[(file, version name, vernaux file offset, vna_other)] from .gnu.version_r."""
        out = []
        if self.verneed is None:
            return out
        d, off = self.data, self.verneed["offset"]
        for _ in range(self.verneed["info"]):
            vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", d, off)
            file = self.string(vn_file)
            aux = off + vn_aux
            for _ in range(vn_cnt):
                vna_hash, vna_flags, vna_other, vna_name, vna_next = struct.unpack_from("<IHHII", d, aux)
                out.append((file, self.string(vna_name), aux, vna_other))
                aux += vna_next
            if vn_next == 0:
                break
            off += vn_next
        return out

    def glibc_needs(self):
        """[(file, version, [symbols])] for glibc versions this file needs."""
        out = []
        for file, name, _, other in self.needs():
            if file in GLIBC_FILES and name.startswith("GLIBC_2."):
                syms = [s for i, _, s, shndx in self.symbols if shndx == 0 and self.versym and self.symbol_version_index(i) == other]
                out.append((file, name[len("GLIBC_"):], syms))
        return out

    def string_offset(self, text):
        """An offset in the dynamic string table where `text` starts as a whole string, or None."""
        needle = text.encode() + b"\0"
        base, size = self.strtab["offset"], self.strtab["size"]
        at = self.data.find(needle, base, base + size)
        while at != -1:
            if at == base or self.data[at - 1] == 0:
                return at - base
            at = self.data.find(needle, at + 1, base + size)
        return None

    def rename(self, name_off, old, new):
        """Overwrite a symbol name's first three bytes, refusing where another string shares them
        (a linker may store a name as the tail of a longer one)."""
        assert len(old) == len(new) and old[3:] == new[3:]
        end = name_off + len(old)
        for _, o, _, _ in self.symbols:
            if o < name_off + 3 and o != name_off and o + len(self.string(o)) == end:
                raise SystemExit(f"{self.path}: the name {old} shares its bytes with {self.string(o)}; cannot rename it")
        start = self.strtab["offset"] + name_off
        self.data[start:start + 3] = new[:3].encode()

    def retarget(self, aux_off, version):
        name_off = self.string_offset(version)
        if name_off is None:
            raise SystemExit(f"{self.path}: no string {version} in the dynamic string table to bind to")
        struct.pack_into("<IH", self.data, aux_off, elf_hash(version), 0)
        struct.pack_into("<I", self.data, aux_off + 8, name_off)

    def set_global(self, i):
        struct.pack_into("<H", self.data, self.versym["offset"] + 2 * i, 1)

    def save(self):
        with open(self.path, "r+b") as f:
            f.write(self.data)


def newest(elf):
    versions = [v for _, v, _ in elf.glibc_needs()]
    return max(versions, key=version_key) if versions else None


def lower(elf, floor):
    """Rewrite needs above `floor`; returns the shim names the file now takes (or an empty list)."""
    shimmed = []
    changed = False
    for file, name, aux, other in elf.needs():
        if file not in GLIBC_FILES or not name.startswith("GLIBC_2.") or version_key(name[6:]) <= version_key(floor):
            continue
        users = [(i, st, s) for i, st, s, shndx in elf.symbols if shndx == 0 and elf.symbol_version_index(i) == other]
        defined = [s for i, st, s, shndx in elf.symbols if shndx != 0 and elf.symbol_version_index(i) == other]
        if defined:
            raise SystemExit(f"{elf.path}: defines {', '.join(defined)} under {name}; not a library this tool can lower")
        unknown = [s for _, _, s in users if s not in REBIND and s not in SHIM]
        if unknown:
            raise SystemExit(f"{elf.path}: needs {', '.join(unknown)} of {name} ({file}), newer than glibc {floor}, and no older"
                             " version or stand-in is known for it")
        targets = {REBIND[s] for _, _, s in users if s in REBIND}
        if len(targets) > 1:
            raise SystemExit(f"{elf.path}: {name}'s symbols would rebind to several versions ({sorted(targets)})")
        for i, st, s in users:
            if s in SHIM:
                elf.rename(st, s, SHIM[s])
                elf.set_global(i)
                shimmed.append(SHIM[s])
        # The entry now names an old version: the rebound symbols' (hypot's 2.2.5), or, where only
        # renamed symbols used it, the oldest version the file already needs (always present).
        elf.retarget(aux, targets.pop() if targets else "GLIBC_2.2.5")
        changed = True
    if changed:
        elf.save()
    return shimmed


def main(argv):
    mode, floor = "report", None
    if argv and argv[0] == "--lower":
        mode, floor, argv = "lower", argv[1], argv[2:]
    elif argv and argv[0] == "--max":
        mode, argv = "max", argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    overall = None
    for path in argv:
        elf = ELF(path)
        if mode == "lower":
            shims = lower(elf, floor)
            if shims:
                print(f"{path}: {' '.join(sorted(set(shims)))}")
            elf = ELF(path)
        v = newest(elf)
        if v and (overall is None or version_key(v) > version_key(overall)):
            overall = v
        if mode == "report":
            detail = "; ".join(f"{need} {','.join(s)}" for _, need, s in elf.glibc_needs() if need == v)
            print(f"{v or '-'}\t{path}\t{detail}")
    if mode == "lower" and overall and version_key(overall) > version_key(floor):
        raise SystemExit(f"still needs glibc {overall} after lowering to {floor}")
    if mode in ("max", "report"):
        print(overall or "none")


if __name__ == "__main__":
    main(sys.argv[1:])
