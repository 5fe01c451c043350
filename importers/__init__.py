"""Other systems' history into ledger records: the generator, CFPB exports, mapped CSV."""
