"""Generated protobuf/gRPC modules for the Open Inference Protocol (plus Triton's RepositoryIndex).

The source is ``grpc_service.proto`` beside this file; ``generate.sh`` regenerates
the ``grpc_service_pb2*`` modules, which are committed. Do not edit them by hand.
"""
