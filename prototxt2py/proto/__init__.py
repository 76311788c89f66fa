"""Caffe protobuf schema: ``caffe_pb2`` is generated from ``proto/caffe.proto`` by ``scripts/gen_proto.py``."""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
