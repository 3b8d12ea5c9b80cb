"""The gateway's gRPC API for Python clients: the messages (`pb`) and `GatewayStub`,
generated from proto/dskit/v1/gateway.proto (`dskit serve --grpc-port N` serves it).

    import grpc
    from dskit.gateway.rpc import GatewayStub, pb

    with grpc.insecure_channel("127.0.0.1:50051") as channel:
        for event in GatewayStub(channel).Ask(pb.AskRequest(content="hi"), timeout=30):
            print(event.content, end="")
"""

from dskit.gateway._pb import gateway_pb2 as pb
from dskit.gateway._pb.gateway_pb2_grpc import GatewayStub

__all__ = ["GatewayStub", "pb"]
