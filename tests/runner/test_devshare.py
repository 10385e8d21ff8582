"""Device memory shared by descriptor: the ctypes mirror of cuda.h, argument checks and the dtype mapping on
any host; export, import and teardown where there is a GPU."""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kfoundry.runner import devshare
from kfoundry.runner.devshare import DeviceShareError

#: dtypes that cross between workers, with the typestr and the dtype torch builds before viewing back.
WIRE_DTYPES = {
    torch.float32: ("<f4", torch.float32),
    torch.float16: ("<f2", torch.float16),
    torch.float64: ("<f8", torch.float64),
    torch.bfloat16: ("<i2", torch.int16),
    torch.int8: ("|i1", torch.int8),
    torch.int16: ("<i2", torch.int16),
    torch.int32: ("<i4", torch.int32),
    torch.int64: ("<i8", torch.int64),
    torch.uint8: ("|u1", torch.uint8),
    torch.bool: ("|b1", torch.bool),
    torch.float8_e4m3fn: ("|u1", torch.uint8),
    torch.float8_e5m2: ("|u1", torch.uint8),
    torch.complex64: ("<c8", torch.complex64),
}

#: Module constant -> the cuda.h enumerator it copies.
ENUMS = {
    "ATTR_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED": "CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED",
    "ATTR_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED": "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED",
    "MEM_ALLOCATION_TYPE_PINNED": "CU_MEM_ALLOCATION_TYPE_PINNED",
    "MEM_LOCATION_TYPE_DEVICE": "CU_MEM_LOCATION_TYPE_DEVICE",
    "MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR": "CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR",
    "MEM_ACCESS_FLAGS_PROT_READWRITE": "CU_MEM_ACCESS_FLAGS_PROT_READWRITE",
    "MEM_ALLOC_GRANULARITY_MINIMUM": "CU_MEM_ALLOC_GRANULARITY_MINIMUM",
    "MEM_ALLOC_GRANULARITY_RECOMMENDED": "CU_MEM_ALLOC_GRANULARITY_RECOMMENDED",
}

#: (C type, ctypes mirror, fields whose offsets must agree; dotted names reach into nested structs)
STRUCTS = [
    ("CUmemLocation", devshare._MemLocation, ["type", "id"]),
    ("CUmemAllocationProp", devshare._MemAllocationProp,
     ["type", "requestedHandleTypes", "location", "location.id", "win32HandleMetaData", "allocFlags",
      "allocFlags.compressionType", "allocFlags.gpuDirectRDMACapable", "allocFlags.usage", "allocFlags.reserved"]),
    ("CUmemAccessDesc", devshare._MemAccessDesc, ["location", "location.id", "flags"]),
]
SCALARS = [("CUdeviceptr", ctypes.c_uint64), ("CUmemGenericAllocationHandle", ctypes.c_uint64), ("CUdevice", ctypes.c_int),
           ("CUresult", ctypes.c_int), ("CUmemAllocationHandleType", ctypes.c_int)]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour on a host without a usable GPU")


def _cuda_header() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    for root in roots:
        if root and (Path(root) / "include" / "cuda.h").is_file():
            return Path(root) / "include"
    return None


def _ctypes_offset(struct: type[ctypes.Structure], dotted: str) -> int:
    offset = 0
    for name in dotted.split("."):
        field = getattr(struct, name)
        offset += field.offset
        struct = dict(struct._fields_)[name]
    return offset


@pytest.fixture(scope="module")
def cuda_h(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the C compiler makes of cuda.h: sizes, offsets, enum values and symbol names, as ``kind name -> value``."""
    include, cc = _cuda_header(), shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if include is None or cc is None:
        pytest.skip(f"needs cuda.h and a C compiler (cuda.h: {include}, cc: {cc})")
    lines = [f'SIZE({c})' for c, *_ in STRUCTS] + [f'SIZE({c})' for c, _ in SCALARS]
    lines += [f'OFF({c}, {f})' for c, _, fields in STRUCTS for f in fields]
    lines += [f'VAL({c})' for c in [*ENUMS.values(), "CUDA_VERSION"]]
    lines += [f'SYM({name.removesuffix("_v2")})' for name in devshare.SIGNATURES]
    source = "\n".join([
        "#include <stddef.h>", "#include <stdio.h>", "#include <cuda.h>",
        "#define STR(x) #x", "#define XSTR(x) STR(x)",
        '#define SIZE(t) printf("size %s %zu\\n", #t, sizeof(t));',
        '#define OFF(t, f) printf("offset %s.%s %zu\\n", #t, #f, offsetof(t, f));',
        '#define VAL(e) printf("enum %s %lld\\n", #e, (long long)(e));',
        '#define SYM(f) printf("symbol %s %s\\n", #f, XSTR(f));',
        "int main(void) {", *lines, "return 0; }", ""])
    work = tmp_path_factory.mktemp("cuda_h")
    (work / "probe.c").write_text(source)
    subprocess.run([cc, "-I", str(include), "-o", str(work / "probe"), str(work / "probe.c")], check=True, capture_output=True, timeout=60)
    out = subprocess.run([str(work / "probe")], check=True, capture_output=True, text=True, timeout=30).stdout
    return {" ".join(line.split()[:2]): line.split()[2] for line in out.splitlines()}


def test_the_ctypes_structs_have_the_sizes_and_offsets_the_c_compiler_gives_cuda_h(cuda_h: dict[str, str]) -> None:
    mine = {f"size {c}": str(ctypes.sizeof(s)) for c, s, _ in STRUCTS}
    mine |= {f"size {c}": str(ctypes.sizeof(s)) for c, s in SCALARS}
    mine |= {f"offset {c}.{f}": str(_ctypes_offset(s, f)) for c, s, fields in STRUCTS for f in fields}

    assert mine == {k: cuda_h[k] for k in mine}
    assert cuda_h["size CUmemAllocationProp"] == "32"  # the _v1 layout: 4 + 4 + 8 + pointer + 8 flag bytes


def test_the_enum_values_are_cuda_h_s(cuda_h: dict[str, str]) -> None:
    assert {c: str(getattr(devshare, name)) for name, c in ENUMS.items()} == {c: cuda_h[f"enum {c}"] for c in ENUMS.values()}


def test_every_driver_call_binds_the_symbol_cuda_h_maps_its_name_to(cuda_h: dict[str, str]) -> None:
    """cuda.h renames some calls (cuCtxPushCurrent is cuCtxPushCurrent_v2); ctypes must ask for the exported one."""
    expected = {f"symbol {name.removesuffix('_v2')}": name for name in devshare.SIGNATURES}

    assert {k: cuda_h[k] for k in expected} == expected


@pytest.mark.parametrize("dtype", list(WIRE_DTYPES), ids=str)
def test_each_wire_dtype_has_a_typestr_of_its_own_width(dtype: torch.dtype) -> None:
    typestr, carrier = devshare._typestr(dtype)

    assert (typestr, carrier) == WIRE_DTYPES[dtype]
    assert np.dtype(typestr).itemsize == carrier.itemsize == dtype.itemsize
    assert torch.empty(2, dtype=carrier).view(dtype).shape == (2,)


@pytest.mark.skipif(torch.version.cuda is not None, reason="uses the CPU build's CUDA error as the sign that the typestr was read")
@pytest.mark.parametrize("dtype", list(WIRE_DTYPES), ids=str)
def test_torchs_interface_reader_accepts_every_typestr_emitted(dtype: torch.dtype) -> None:
    """torch parses the typestr before it needs CUDA: a typestr it refuses is a TypeError, one it takes gets as far as CUDA."""
    class Fake:
        def __init__(self, typestr: str) -> None:
            self.__cuda_array_interface__ = {"version": 3, "shape": (2,), "typestr": typestr, "data": (1 << 40, False),
                                             "strides": None, "stream": None}

    with pytest.raises(TypeError, match="can't convert"):
        torch.as_tensor(Fake("<V2"), device="cuda")
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):  # which one depends on torch's lazy-init state
        torch.as_tensor(Fake(devshare._typestr(dtype)[0]), device="cuda")


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint32, "float32", None], ids=str)
def test_dtypes_without_a_plain_memory_image_are_refused(dtype: object) -> None:
    with pytest.raises(DeviceShareError):
        devshare._typestr(dtype)  # type: ignore[arg-type]


def test_without_a_driver_supported_gives_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, *args: object, **kwargs: object) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    devshare._lib.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    try:
        reason = devshare.supported()
    finally:
        devshare._lib.cache_clear()

    assert reason is not None and "libcuda.so.1" in reason


def test_supported_answers_with_none_or_a_reason_and_never_raises() -> None:
    reason = devshare.supported()

    assert reason is None or (isinstance(reason, str) and reason)


@no_cuda
def test_exporting_without_a_gpu_is_a_device_share_error() -> None:
    with pytest.raises(DeviceShareError):
        devshare.exportable_empty((4,), torch.float32, 0)
    with pytest.raises(DeviceShareError):
        devshare.exportable_copy(torch.zeros(4))


def _open_fd(tmp_path: Path) -> int:
    path = tmp_path / "not-device-memory"
    path.write_bytes(b"\0" * 4096)
    return os.open(path, os.O_RDONLY)


def _is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    os.close(fd)
    return False


@pytest.mark.parametrize(("nbytes", "shape", "dtype"), [
    (4096, (-1, 4), torch.float32),
    (4096, (1,) * 17, torch.float32),
    (4096, ("4",), torch.float32),
    (4096, (2048,), torch.float32),
    (0, (0,), torch.float32),
    (-4096, (1,), torch.float32),
    (1 << 60, (1,), torch.float32),
    (4096, (1 << 40, 1 << 40), torch.float32),
    (4096, (4,), torch.qint8),
    ("4096", (4,), torch.float32),
], ids=["negative-dim", "17-dims", "str-dim", "claim-too-small", "zero-claim", "negative-claim", "huge-claim",
        "huge-shape", "quantized", "str-claim"])
def test_a_bad_claim_is_refused_before_the_driver_sees_the_descriptor_and_the_descriptor_is_closed(
        tmp_path: Path, nbytes: object, shape: tuple[object, ...], dtype: torch.dtype) -> None:
    fd = _open_fd(tmp_path)

    with pytest.raises(DeviceShareError):
        devshare.import_tensor(fd, nbytes, shape, dtype, 0)  # type: ignore[arg-type]

    assert _is_closed(fd)


def test_a_regular_file_is_not_device_memory(tmp_path: Path) -> None:
    fd = _open_fd(tmp_path)

    with pytest.raises(DeviceShareError):
        devshare.import_tensor(fd, 2 << 20, (16,), torch.float32, 0)

    assert _is_closed(fd)


# --- on a GPU -------------------------------------------------------------------------------------------------


@pytest.fixture
def device() -> int:
    reason = devshare.supported(0)
    if reason:
        pytest.skip(reason)
    return 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(WIRE_DTYPES), ids=str)
def test_an_export_imported_in_the_same_process_aliases_the_same_memory(device: int, dtype: torch.dtype) -> None:
    mine, fd, nbytes = devshare.exportable_empty((3, 5), dtype, device)
    raw = mine.view(torch.uint8)
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8, device=device))

    theirs = devshare.import_tensor(fd, nbytes, (3, 5), dtype, device)
    theirs.view(torch.uint8)[0, 0] = 7
    torch.cuda.synchronize()

    assert _is_closed(fd)
    assert theirs.dtype == dtype and theirs.shape == (3, 5) and theirs.data_ptr() != mine.data_ptr()
    assert torch.equal(mine.view(torch.uint8), theirs.view(torch.uint8)) and int(mine.view(torch.uint8)[0, 0]) == 7
    assert nbytes >= mine.numel() * dtype.itemsize


@pytest.mark.gpu
def test_a_copy_holds_the_values_and_the_memory_outlives_the_exporters_tensor(device: int) -> None:
    source = torch.randn(1000, 3, device=device).t()

    mine, fd, nbytes = devshare.exportable_copy(source)
    torch.cuda.current_stream().synchronize()
    del mine
    gc.collect()
    theirs = devshare.import_tensor(fd, nbytes, (3, 1000), torch.float32, device)

    assert torch.equal(theirs, source)


@pytest.mark.gpu
def test_an_overstated_size_is_refused_by_the_driver(device: int) -> None:
    mine, fd, nbytes = devshare.exportable_empty((4,), torch.float32, device)

    with pytest.raises(DeviceShareError, match="cuMemMap.*smaller than"):
        devshare.import_tensor(fd, nbytes + 1, (4,), torch.float32, device)

    assert _is_closed(fd)


@pytest.mark.gpu
def test_dropping_the_last_view_gives_the_memory_back(device: int) -> None:
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info(device)
    mine, fd, _ = devshare.exportable_empty((256 << 20,), torch.uint8, device)
    view = mine[1:]
    os.close(fd)
    del mine
    gc.collect()
    view.fill_(1)
    free_while, _ = torch.cuda.mem_get_info(device)
    del view
    gc.collect()
    free_after, _ = torch.cuda.mem_get_info(device)

    assert free_before - free_while >= 256 << 20
    assert free_before - free_after < 64 << 20


# --- the control flow, against a driver double -----------------------------------------------------------------


class FakeDriver:
    """The driver calls devshare makes, over host bookkeeping: exported descriptors are temp files it remembers.

    Out-parameters arrive as ``ctypes.byref`` objects, as the real library gets them; ``_obj`` is what they point to.
    """

    CTX, GRAIN = 0x5000, 2 << 20

    def __init__(self, tmp_path: Path, location: int = 0, fail: str = "") -> None:
        self.tmp, self.location, self.fail = tmp_path, location, fail
        self.calls: list[str] = []
        self.sizes: dict[int, int] = {}
        self.exported: dict[int, int] = {}  # inode -> handle

    def _call(self, name: str) -> int:
        self.calls.append(name)
        return 1 if name == self.fail else 0  # CUDA_ERROR_INVALID_VALUE

    def cuGetErrorName(self, status: int, out: Any) -> int:
        out._obj.value = b"CUDA_ERROR_INVALID_VALUE"
        return 0

    def cuGetErrorString(self, status: int, out: Any) -> int:
        out._obj.value = b"invalid argument"
        return 0

    def cuCtxGetCurrent(self, out: Any) -> int:
        out._obj.value = self.CTX
        return 0

    def cuMemGetAllocationGranularity(self, out: Any, prop: Any, flag: int) -> int:
        out._obj.value = self.GRAIN
        return 0

    def cuMemCreate(self, out: Any, size: int, prop: Any, flags: int) -> int:
        out._obj.value = len(self.sizes) + 1
        self.sizes[out._obj.value] = size
        return self._call("cuMemCreate")

    def cuMemAddressReserve(self, out: Any, size: int, align: int, addr: int, flags: int) -> int:
        out._obj.value = 0x7F00_0000_0000 + len(self.calls) * self.GRAIN
        return self._call("cuMemAddressReserve")

    def cuMemMap(self, ptr: int, size: int, offset: int, handle: int, flags: int) -> int:
        self.calls.append("cuMemMap")
        return 1 if size > self.sizes[handle] else 0  # what cuda.h documents

    def cuMemSetAccess(self, ptr: int, size: int, desc: Any, count: int) -> int:
        return self._call("cuMemSetAccess")

    def cuMemExportToShareableHandle(self, out: Any, handle: int, kind: int, flags: int) -> int:
        fd = os.open(self.tmp, os.O_RDWR | os.O_TMPFILE)
        self.exported[os.fstat(fd).st_ino] = handle
        out._obj.value = fd
        return self._call("cuMemExportToShareableHandle")

    def cuMemImportFromShareableHandle(self, out: Any, fd: Any, kind: int) -> int:
        self.calls.append("cuMemImportFromShareableHandle")
        handle = self.exported.get(os.fstat(fd.value or 0).st_ino)
        if handle is None:
            return 1
        out._obj.value = handle
        return 0

    def cuMemGetAllocationPropertiesFromHandle(self, out: Any, handle: int) -> int:
        out._obj.type, out._obj.location.type, out._obj.location.id = 1, 1, self.location
        return self._call("cuMemGetAllocationPropertiesFromHandle")

    def cuCtxSynchronize(self) -> int:
        return self._call("cuCtxSynchronize")

    def cuMemUnmap(self, ptr: int, size: int) -> int:
        return self._call("cuMemUnmap")

    def cuMemRelease(self, handle: int) -> int:
        return self._call("cuMemRelease")

    def cuMemAddressFree(self, ptr: int, size: int) -> int:
        return self._call("cuMemAddressFree")


class FakeTensor:
    """Stands in for what torch.as_tensor returns: it keeps the interface object, as torch's storage does."""

    def __init__(self, owner: Any, device: torch.device) -> None:
        self.owner = owner

    def data_ptr(self) -> int:
        return self.owner.__cuda_array_interface__["data"][0]

    def view(self, dtype: torch.dtype) -> FakeTensor:
        return self


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDriver]:
    driver = FakeDriver(tmp_path)
    gc.collect()  # finalizers of earlier tests' mappings (kept by exception cycles) must not report to this driver
    monkeypatch.setattr(devshare, "_lib", lambda: driver)
    monkeypatch.setattr(devshare, "_open", lambda device_index: (device_index, FakeDriver.CTX))
    monkeypatch.setattr(torch, "as_tensor", FakeTensor)
    yield driver
    gc.collect()  # ... nor this test's reach the real driver


TEARDOWN = ["cuCtxSynchronize", "cuMemUnmap", "cuMemRelease", "cuMemAddressFree"]


def test_dropping_an_export_syncs_then_unmaps_releases_and_frees_the_range_once(fake: FakeDriver) -> None:
    tensor, fd, nbytes = devshare.exportable_empty((3, 5), torch.bfloat16, 0)
    os.close(fd)
    assert fake.calls == ["cuMemCreate", "cuMemAddressReserve", "cuMemMap", "cuMemSetAccess", "cuMemExportToShareableHandle"]

    del tensor
    gc.collect()

    assert fake.calls[5:] == TEARDOWN
    assert nbytes == FakeDriver.GRAIN


def test_an_import_maps_the_claim_and_its_tensor_keeps_the_mapping(fake: FakeDriver) -> None:
    _, fd, nbytes = devshare.exportable_empty((1000,), torch.float32, 0)
    fake.calls.clear()

    tensor = devshare.import_tensor(fd, nbytes, (1000,), torch.float32, 0)

    assert _is_closed(fd)
    assert fake.calls == ["cuMemImportFromShareableHandle", "cuMemGetAllocationPropertiesFromHandle", "cuMemAddressReserve", "cuMemMap", "cuMemSetAccess"]
    del tensor
    gc.collect()
    assert fake.calls[5:] == TEARDOWN


def test_an_overstated_claim_fails_at_the_map_and_gives_back_the_handle_and_the_range(fake: FakeDriver) -> None:
    _, fd, nbytes = devshare.exportable_empty((4,), torch.float32, 0)
    fake.calls.clear()

    with pytest.raises(DeviceShareError, match=r"cuMemMap failed: CUDA_ERROR_INVALID_VALUE .*smaller than the 4194304 bytes") as caught:
        devshare.import_tensor(fd, nbytes + 1, (4,), torch.float32, 0)

    assert caught.value.status == 1 and _is_closed(fd)
    assert fake.calls == ["cuMemImportFromShareableHandle", "cuMemGetAllocationPropertiesFromHandle", "cuMemAddressReserve", "cuMemMap",
                          "cuMemRelease", "cuMemAddressFree"]


def test_a_descriptor_the_driver_does_not_know_is_refused_and_closed(fake: FakeDriver, tmp_path: Path) -> None:
    fd = _open_fd(tmp_path)

    with pytest.raises(DeviceShareError, match="cuMemImportFromShareableHandle failed.*not exported CUDA memory"):
        devshare.import_tensor(fd, 4096, (4,), torch.float32, 0)

    assert _is_closed(fd) and fake.calls == ["cuMemImportFromShareableHandle"]


def test_memory_on_another_device_is_refused(fake: FakeDriver) -> None:
    _, fd, nbytes = devshare.exportable_empty((4,), torch.float32, 0)
    fake.calls.clear()
    fake.location = 1

    with pytest.raises(DeviceShareError, match="not on CUDA device 0"):
        devshare.import_tensor(fd, nbytes, (4,), torch.float32, 0)

    assert fake.calls == ["cuMemImportFromShareableHandle", "cuMemGetAllocationPropertiesFromHandle", "cuMemRelease"]


@pytest.mark.parametrize(("fail", "undo"), [
    ("cuMemAddressReserve", ["cuMemRelease"]),
    ("cuMemSetAccess", ["cuMemUnmap", "cuMemRelease", "cuMemAddressFree"]),
    ("cuMemExportToShareableHandle", ["cuMemUnmap", "cuMemRelease", "cuMemAddressFree"]),
])
def test_a_failed_export_undoes_exactly_what_was_done(fake: FakeDriver, fail: str, undo: list[str]) -> None:
    fake.fail = fail
    open_before = set(os.listdir("/proc/self/fd"))

    with pytest.raises(DeviceShareError, match=fail):
        devshare.exportable_empty((4,), torch.float32, 0)

    assert fake.calls[fake.calls.index(fail) + 1:] == undo
    assert set(os.listdir("/proc/self/fd")) <= open_before


def test_if_torch_copied_instead_of_wrapping_the_export_fails_and_tears_down_once(fake: FakeDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    class Copy(FakeTensor):
        def __init__(self, owner: Any, device: torch.device) -> None:  # a copy keeps nothing of the source
            self.owner = None

        def data_ptr(self) -> int:
            return 0x1000

    monkeypatch.setattr(torch, "as_tensor", Copy)
    open_before = set(os.listdir("/proc/self/fd"))

    with pytest.raises(DeviceShareError, match="copied"):
        devshare.exportable_empty((4,), torch.float32, 0)
    gc.collect()

    assert fake.calls[fake.calls.index("cuMemExportToShareableHandle") + 1:] == TEARDOWN
    assert set(os.listdir("/proc/self/fd")) <= open_before
