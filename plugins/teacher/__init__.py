"""Teacher adaptation (``register_teacher_stages``): DAPT, reasoning SFT data, SFT, preference (DPO), evaluation."""
