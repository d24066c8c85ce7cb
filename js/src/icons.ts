import { LabIcon } from '@jupyterlab/ui-components';

/** Casa's Dask icon: a house (the facility) sheltering three stacked task bars (Dask); themed by jp-icon3. */
const CASA_DASK_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2 1.5 10.5l1.3 1.6L4 11.1V22h16V11.1l1.2 1 1.3-1.6L12 2zm6 18H6V9.5l6-4.9 6 4.9V20z"/>
    <rect x="8" y="11" width="8" height="2" rx="1"/>
    <rect x="8" y="14" width="6" height="2" rx="1"/>
    <rect x="8" y="17" width="4" height="2" rx="1"/>
  </g>
</svg>`;

export const casaDaskIcon = new LabIcon({ name: 'casa-hub-ext:dask', svgstr: CASA_DASK_SVG });
