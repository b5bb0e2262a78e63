"""Turn DICOM radiographs + MATLAB masks into NIfTI pairs and a datalist."""
