"""Knowledge inheritance (Qin et al., NAACL 2022, arXiv 2105.13880) and the MLM pre-training it builds on:
the inheritance-rate schedules, the KI loss, the validation-loss curve and what method=pretrain and method=ki
share (mlm.py). Training masks are the shared masking collator's (runner.tasks.collators.MaskingCollator:
seeded by the run seed and the batch's tokens), as for every masked-LM run."""
