"""Physics of powder diffraction, without torch: crystals, reflections, profiles, measured patterns,
FFT denoising and the noise bank."""
