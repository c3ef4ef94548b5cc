"""The payment service: card tokenization (the PCI boundary), a simulated card
processor, and the saga's Charge, Void and Refund steps."""
