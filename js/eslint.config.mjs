// ESLint (flat config) for the Casa JupyterLab extension: typescript-eslint's type-aware recommended rules,
// plus the naming and safety habits of JupyterLab's own extensions.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'node_modules/', '../casa_hub_ext/labextension/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    files: ['src/**/*.ts'],
    languageOptions: {
      parserOptions: { project: './tsconfig.json', tsconfigRootDir: import.meta.dirname }
    },
    rules: {
      '@typescript-eslint/naming-convention': [
        'error',
        { selector: 'interface', format: ['PascalCase'], custom: { regex: '^I[A-Z]', match: true } }
      ],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { args: 'none' }],
      '@typescript-eslint/no-explicit-any': 'error',
      eqeqeq: 'error',
      curly: 'error',
      'no-restricted-globals': [
        'error',
        { name: 'setInterval', message: 'poll with @lumino/polling Poll (standby: when-hidden)' }
      ],
      'no-restricted-properties': [
        'error',
        { object: 'window', property: 'setInterval', message: 'poll with @lumino/polling Poll' },
        { property: 'innerHTML', message: 'build DOM nodes: nothing from the server is parsed as HTML' }
      ]
    }
  },
  { files: ['eslint.config.mjs'], ...tseslint.configs.disableTypeChecked }
);
