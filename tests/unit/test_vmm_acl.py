"""fcd_vmm.acl: the system.posix_acl_access encoding, and keeping other uids' entries."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from fcd_vmm import acl, jailfs
from fcd_vmm.acl import GROUP, GROUP_OBJ, MASK, OTHER, UNDEFINED_ID, USER, USER_OBJ, Entry

U = UNDEFINED_ID


def raw(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_minimal_acl_from_mode_round_trips() -> None:
    entries = acl.from_mode(0o640)
    assert entries == [Entry(USER_OBJ, U, 6), Entry(GROUP_OBJ, U, 4), Entry(OTHER, U, 0)]
    data = acl.encode(entries)
    assert data == raw((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U))
    assert acl.decode(data) == entries
    assert acl.is_minimal(entries)


def test_grant_adds_user_and_mask_keeping_the_mode_entries() -> None:
    entries = acl.with_user(acl.from_mode(0o400), 940_001)
    assert acl.encode(entries) == raw(
        (USER_OBJ, 4, U), (USER, 4, 940_001), (GROUP_OBJ, 0, U), (MASK, 4, U), (OTHER, 0, U)
    )
    assert acl.user_perm(entries, 940_001) == acl.READ


def test_many_uids_share_one_file_and_revoke_removes_only_one() -> None:
    entries = acl.from_mode(0o400)
    for uid in (30, 10, 20):
        entries = acl.with_user(entries, uid)
    assert [e.id for e in entries if e.tag == USER] == [10, 20, 30]  # sorted by id
    entries = acl.with_user(entries, 20)  # idempotent: one entry per uid
    assert sum(1 for e in entries if e.tag == USER) == 3
    entries = acl.without_user(entries, 20)
    assert [e.id for e in entries if e.tag == USER] == [10, 30]
    assert any(e.tag == MASK for e in entries)
    entries = acl.without_user(acl.without_user(entries, 10), 30)
    assert entries == acl.from_mode(0o400)  # collapses back: no mask without named entries
    assert acl.without_user(entries, 99) == entries


def test_foreign_group_entries_are_kept_and_count_in_the_mask() -> None:
    start = acl.decode(
        raw((USER_OBJ, 6, U), (GROUP_OBJ, 0, U), (GROUP, 2, 777), (MASK, 2, U), (OTHER, 0, U))
    )
    entries = acl.with_user(start, 5)
    assert Entry(GROUP, 777, 2) in entries
    assert Entry(MASK, U, 6) in entries
    entries = acl.without_user(entries, 5)
    assert entries == start


@pytest.mark.parametrize(
    "data",
    [
        b"",
        struct.pack("<I", 1) + raw((USER_OBJ, 6, U), (GROUP_OBJ, 0, U), (OTHER, 0, U))[4:],
        raw((USER_OBJ, 6, U), (GROUP_OBJ, 0, U), (OTHER, 0, U))[:-1],
        raw((USER_OBJ, 6, U), (GROUP_OBJ, 0, U)),  # no OTHER
        raw((USER_OBJ, 6, U), (USER, 4, 1), (GROUP_OBJ, 0, U), (OTHER, 0, U)),  # no mask
        raw((USER_OBJ, 6, U), (0x40, 4, 1), (GROUP_OBJ, 0, U), (OTHER, 0, U)),  # unknown tag
        raw((USER_OBJ, 0o10, U), (GROUP_OBJ, 0, U), (OTHER, 0, U)),  # bad perm
        raw(
            (USER_OBJ, 6, U),
            (USER, 4, 1),
            (USER, 4, 1),
            (GROUP_OBJ, 0, U),
            (MASK, 4, U),
            (OTHER, 0, U),
        ),
    ],
)
def test_decode_refuses_what_the_kernel_would_not_store(data: bytes) -> None:
    with pytest.raises(acl.AclError):
        acl.decode(data)


def test_grant_and_revoke_on_a_real_file(tmp_path: Path) -> None:
    f = tmp_path / "memory"
    f.write_bytes(b"m")
    os.chmod(f, 0o400)
    try:
        jailfs.grant_read(str(f), 940_123)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            pytest.skip("no POSIX ACLs on this filesystem")
        raise
    jailfs.grant_read(str(f), 940_124)
    entries = jailfs.read_acl(str(f))
    assert acl.user_perm(entries, 940_123) == acl.READ == acl.user_perm(entries, 940_124)
    assert os.stat(f).st_mode & 0o777 == 0o440  # group bits show the mask; other stays 0
    assert jailfs.revoke(str(f), 940_123)
    assert not jailfs.revoke(str(f), 940_123)
    assert jailfs.revoke(str(f), 940_124)
    assert os.stat(f).st_mode & 0o777 == 0o400
    with pytest.raises(OSError) as ei:
        os.getxattr(f, jailfs.ACL_XATTR)  # the kernel stores no ACL equivalent to the mode
    assert ei.value.errno == errno.ENODATA
