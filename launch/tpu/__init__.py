"""Cloud TPU launch scripts: `zoo-tpu` drives gcloud to run zoo-train on a TPU VM or pod slice."""
