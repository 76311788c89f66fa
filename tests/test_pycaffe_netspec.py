"""``caffe.NetSpec``/``layers``/``params``/``to_proto``, ``caffe.coord_map`` and ``caffe.draw`` with pycaffe's
behaviour (BVLC python/caffe/test/test_net_spec.py, test_coord_map.py, test_draw.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden import CORPUS
from google.protobuf import text_format

from prototxt2py import caffe
from prototxt2py.caffe import layers as L
from prototxt2py.caffe import params as P
from prototxt2py.caffe.coord_map import AxisMismatchException, coord_map_from_to, crop
from prototxt2py.caffe.proto import caffe_pb2

LENET = CORPUS / "BVLC__caffe/examples/mnist/lenet.prototxt"


def lenet_deploy() -> caffe_pb2.NetParameter:
    """Caffe's examples/mnist/lenet.prototxt written with NetSpec."""
    lr = [dict(lr_mult=1), dict(lr_mult=2)]
    fill = dict(weight_filler=dict(type="xavier"), bias_filler=dict(type="constant"))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[64, 1, 28, 28]))
    n.conv1 = L.Convolution(n.data, param=lr, num_output=20, kernel_size=5, stride=1, **fill)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, param=lr, num_output=50, kernel_size=5, stride=1, **fill)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, param=lr, num_output=500, **fill)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, param=lr, num_output=10, **fill)
    n.prob = L.Softmax(n.ip2)
    net = n.to_proto()
    net.name = "LeNet"
    return net


def test_lenet_round_trip_equals_caffes_prototxt(tmp_path: Path) -> None:
    ours = lenet_deploy()
    theirs = text_format.Parse(LENET.read_text(), caffe_pb2.NetParameter())
    assert ours == theirs, text_format.MessageToString(ours)
    path = tmp_path / "lenet"  # pycaffe's tests load nets from suffix-less temporary files
    path.write_text(str(ours))
    net = caffe.Net(str(path), caffe.TEST)
    assert len(net.layers) == 9 and net.outputs == ["prob"]
    assert net.layers[6].type == "ReLU" and net.bottom_names["relu1"] == net.top_names["relu1"] == ["ip1"]


def test_anonymous_names_and_train_net(tmp_path: Path) -> None:
    data, label = L.DummyData(shape=[dict(dim=[5, 1, 28, 28]), dict(dim=[5, 1, 1, 1])],
                              transform_param=dict(scale=1.0 / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool1, num_output=10, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    loss = L.SoftmaxWithLoss(relu1, label)
    proto = loss.to_proto()
    assert [layer.name for layer in proto.layer] == ["DummyData1", "Convolution1", "Pooling1", "InnerProduct1",
                                                     "ReLU1", "SoftmaxWithLoss1"]
    assert list(proto.layer[0].top) == ["DummyData1", "DummyData2"]  # tops named per type, in order
    assert list(proto.layer[4].bottom) == list(proto.layer[4].top) == ["InnerProduct1"]
    assert proto.layer[0].transform_param.scale == pytest.approx(1 / 255)  # *_param keywords go on the layer
    assert list(proto.layer[1].convolution_param.kernel_size) == [5]  # a scalar for a repeated field
    path = tmp_path / "train.prototxt"
    path.write_text(str(proto))
    net = caffe.Net(str(path), caffe.TRAIN)
    assert len(net.layers) == 6 and net.outputs == ["SoftmaxWithLoss1"]


def test_zero_tops_and_type_error(tmp_path: Path) -> None:
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    proto = n.to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "silence_data", "silence_data2"]
    path = tmp_path / "silent.prototxt"
    path.write_text(str(proto))
    assert len(caffe.Net(str(path), caffe.TEST).forward()) == 0
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)
    with pytest.raises(KeyError):
        n["missing"]
    assert not hasattr(n, "missing")
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE and P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM


def _coord_net(ks: int = 3, stride: int = 1, pad: int = 0, pool: int = 2, dstride: int = 2, dpad: int = 0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    # Deconvolution has no deconvolution_param: as in pycaffe, its fields go in convolution_param
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(num_output=10, kernel_size=dstride * 2, stride=dstride,
                                                              pad=dpad))
    return n


def test_coord_map_conv_pool_deconv_and_crop(tmp_path: Path) -> None:
    n = _coord_net()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)  # 2x pool, 2x deconv: identity
    n = _coord_net(pool=4, dstride=4)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -1)  # 4x: shifted by one
    n = _coord_net(pad=3)
    _, a, b = coord_map_from_to(n.deconv, n.data)
    assert a == 1 and b == -3  # conv padding adds an offset
    n = _coord_net()
    n.relu = L.ReLU(n.deconv)
    assert coord_map_from_to(n.relu, n.data) == coord_map_from_to(n.deconv, n.data)
    n = _coord_net(pad=3)
    n.crop = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [3]
    path = tmp_path / "crop.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    assert net.blobs["crop"].shape == net.blobs["data"].shape[:1] + [10, 100, 100]
    n = _coord_net()
    n.other = L.Convolution(n.aux, num_output=1, kernel_size=1, axis=2)
    with pytest.raises((AxisMismatchException, RuntimeError)):
        coord_map_from_to(n.deconv, n.other)


def test_draw_net_signatures(tmp_path: Path) -> None:
    net = text_format.Parse(LENET.read_text(), caffe_pb2.NetParameter())
    dot = caffe.draw.draw_net(net, "LR", ext="raw")
    assert isinstance(dot, bytes) and b"rankdir=LR" in dot and b"conv1" in dot
    graph = caffe.draw.get_pydot_graph(net, "TB")
    assert "rankdir=TB" in graph.source
    target = tmp_path / "lenet.raw"
    caffe.draw.draw_net_to_file(net, str(target), "BT", phase=caffe.TEST)
    assert target.read_bytes().startswith(b"digraph")
    assert caffe.draw.get_pooling_types_dict()[0] == "MAX"
    assert caffe.draw.get_edge_label(net.layer[1]) == "20"
    png = pytest.importorskip("shutil").which("dot")
    if png:
        assert caffe.draw.draw_net(net, "LR").startswith(b"\x89PNG")
    # draw.py's helpers: a quoted label (for pydot), ValueErrors from get_layer_lr_mult
    conv = net.layer[1]
    assert caffe.draw.get_layer_label(conv, "TB") == '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'
    assert caffe.draw.get_layer_lr_mult(conv) == (1.0, 2.0)
    with pytest.raises(ValueError, match="Pooling layers do not have a learning rate multiplier"):
        caffe.draw.get_layer_lr_mult(net.layer[2])
    conv.param.add(lr_mult=3)
    with pytest.raises(ValueError, match="Could not parse the learning rate multiplier"):
        caffe.draw.get_layer_label(conv, "LR", display_lrm=True)


def test_the_ssd_forks_netspec_additions() -> None:
    """weiliu89/caffe's ``model_libs.py`` (SSD's net generator: VGGNetBody, CreateMultiBoxHead) calls
    ``net.keys()``, ``net.update(name, params)`` and ``del net[name]``, which its ``net_spec.py`` adds to BVLC's;
    they raised here (``keys``: no such top)."""
    net = caffe.NetSpec()
    net.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    net.conv = L.Convolution(net.data, num_output=4, kernel_size=3)
    net.extra = L.ReLU(net.conv)
    assert net.keys() == ["data", "conv", "extra"] and net.vals() == [net.data, net.conv, net.extra]
    net.update("conv", {"dilation": 2})
    del net["extra"]
    proto = net.to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "conv"]
    assert list(proto.layer[1].convolution_param.dilation) == [2]
    assert proto.layer[1].convolution_param.num_output == 4
