"""Istio's proto merge (istio pkg/proto/merge): `proto.Merge` (set scalars overwrite,
messages merge field by field, repeated fields append, map entries replace), except that
an `Any` (`typed_config`) of the same type is unpacked, merged and packed again, and one
of another type replaces the old one.
"""
from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_ANY = any_pb2.Any.DESCRIPTOR.full_name


def merge(dst: Message, src: Message) -> None:
    """Merges `src` into `dst` in place."""
    if dst.DESCRIPTOR.full_name == _ANY:
        _merge_any(dst, src)
        return
    for fd, value in src.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            target = getattr(dst, fd.name)
            for k, v in value.items():
                if fd.message_type.fields_by_name["value"].message_type is not None:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif _repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            sub = getattr(dst, fd.name)
            if not dst.HasField(fd.name):
                sub.CopyFrom(value)
            else:
                merge(sub, value)
        else:
            setattr(dst, fd.name, value)


def _repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 6 has `is_repeated`; older versions only `label`
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _merge_any(dst: any_pb2.Any, src: any_pb2.Any) -> None:
    if not dst.type_url or dst.type_url != src.type_url:
        dst.CopyFrom(src)
        return
    cls = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(src.type_url.rpartition("/")[2]))
    a, b = cls(), cls()
    dst.Unpack(a)
    src.Unpack(b)
    merge(a, b)
    dst.Pack(a, type_url_prefix=dst.type_url.rpartition("/")[0] + "/")
