"""invmeasure.analysis: reading run metrics and drawing the paper's figures."""
