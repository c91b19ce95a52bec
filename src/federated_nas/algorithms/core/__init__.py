"""The contract with the federated loop and what the methods share: no method lives here."""
