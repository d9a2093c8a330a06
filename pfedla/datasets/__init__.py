from pfedla.datasets.federated import FederatedData, build_federated_data

__all__ = ["FederatedData", "build_federated_data"]
