"""``caffe.proto``: the Caffe schema (``caffe.proto.caffe_pb2``), as in pycaffe."""
