"""placeholder"""
layers = params = NetSpec = to_proto = None
