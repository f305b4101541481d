"""The shop side: the Flower ClientApp, local DP training and the privacy ledger."""
