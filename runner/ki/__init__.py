"""Knowledge inheritance (Qin et al., NAACL 2022, arXiv 2105.13880) and the MLM pre-training it builds on:
the inheritance-rate schedules, the KI loss, seeded training masks and the validation-loss curve."""
