"""`moonvae analyse`: reconstruction and sampling measured, the study's findings judged, figures and the report."""
