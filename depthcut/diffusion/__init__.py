"""LayerMerge on diffusion U-Nets (issue 11): diffusers' ``UNet2DModel``, DDPM-style.

What differs from a classifier (SPEC A2, A3, A6 and LayerMerge's DDPM code):

* the nonlinearity between a ResNet block's two convs is GroupNorm + SiLU (+ dropout): removing it removes the
  GroupNorm too, and a new GroupNorm (``postnorm``: 32 groups, or C when C is not divisible by 32) is learned
  after the merged conv, before the residual add;
* the time-embedding projection added between conv1 and conv2 is pushed through conv2: with the block's padding
  moved to its input, conv2 sees a spatially constant map there, so the merged conv plus one projected
  embedding is exact;
* up-sampling convs may be pruned to identity (a 0 ms option); down-sampling convs (stride 2) and ``conv_in`` can
  only be kept; attention, the long skips and their concatenations are barriers, so every merge lies inside
  one ResNet block.

``unet.enumerate_rows`` gives the (block, option) rows (98 on the DDPM CIFAR-10 configuration, as LayerMerge's);
``merge`` builds a block for an option and the intended function it must equal.
"""
