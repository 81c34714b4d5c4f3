"""NASDM: nuclei-mask-conditioned histology synthesis (model, diffusion, data, training).

Heavy modules (torch) are imported by the submodules that need them; importing this
package costs nothing.
"""
