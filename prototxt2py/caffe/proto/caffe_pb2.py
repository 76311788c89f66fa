"""``caffe.proto.caffe_pb2``: the project's generated Caffe messages (BVLC master plus common fork fields)."""

from prototxt2py.proto.caffe_pb2 import *  # noqa: F403
from prototxt2py.proto.caffe_pb2 import DESCRIPTOR, TEST, TRAIN  # noqa: F401
